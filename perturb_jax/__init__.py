"""Perturbations on the perceptual ball (Law, Elliott, Russell, 2020) in JAX."""
