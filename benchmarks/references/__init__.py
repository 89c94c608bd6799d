"""The reference libraries' runs of each method and the torch replica of VGG19_bn with the authors' perceptual-ball
procedure, which the parity tests and the benchmarks compare ours against (they need torch: the test install)."""
