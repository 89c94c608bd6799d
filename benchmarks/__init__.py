"""Benchmarks: tools beside the library, run from the repository root (not installed). Figures: BENCHMARKS.md.

python -m benchmarks.explainer_vs_torch  # our explainer vs the torch reference: ms/step, compile, memory, TFLOP/s
python -m benchmarks.explainer_profile   # where one explainer step goes: forward, bare pass, objective, L-BFGS
python -m benchmarks.end_to_end --workdir=DIR --out=FILE  # authors' procedure vs our main job: images/s, error
python -m benchmarks.methods             # every method of Table 1 vs its reference library: images/s, maps' diff.
python -m benchmarks.aln                 # the ALN's parts apart: train step, SLIC, evaluation

``common`` holds what the explainer's two commands share; ``references/`` the torch replica and the reference
libraries' runs.
"""
