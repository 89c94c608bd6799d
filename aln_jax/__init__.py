"""Adversarial Localization Network (Fan, Zhao, Ermon), on top of ``eval`` and ``perturb_jax``: docs/aln.md."""
