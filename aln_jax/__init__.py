"""Adversarial Localization Network (Fan, Zhao, Ermon): built by a later issue on top of ``eval`` and ``perturb_jax``."""
