"""The reference libraries' runs of each method (Captum, TorchRay, torchattacks) on the torch replica, at the
options of ``perturb_jax.methods``: what the parity tests and ``perturb_jax.methods_benchmark`` compare with. Needs
torch and the reference library; nothing at run time imports this package."""
