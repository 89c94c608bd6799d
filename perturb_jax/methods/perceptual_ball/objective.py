"""The perceptual-ball objective, Eq. (1) and Eq. (4) of Law, Elliott and Russell (2020)."""

from typing import Mapping

import jax
import jax.numpy as jnp

REDUCTIONS = ("mean", "sum")


def multiclass_margin(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Eq. (1): M_i(x) = C_i(x) - max_{j != i} C_j(x), over the last axis."""
    target_logit = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
    others = jnp.where(jax.nn.one_hot(target, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return target_logit - others.max(axis=-1)


def squared_distance(a: jax.Array, b: jax.Array, reduction: str) -> jax.Array:
    """||a - b||^2 as a sum, or divided by the number of elements (the authors' MSE) for ``mean``."""
    sq = jnp.square(a - b)
    return sq.mean() if reduction == "mean" else sq.sum()


def perceptual_distance(acts: Mapping[int, jax.Array], ref_acts: Mapping[int, jax.Array], reduction: str):
    """sum_l ||C_l(x') - C_l(x)||^2 over the chosen ReLU layers, the second term of Eq. (4)."""
    return sum(squared_distance(acts[k], ref_acts[k], reduction) for k in sorted(ref_acts))


def perceptual_ball_loss(logits, acts, ref_acts, x_adv, x, target, *, lam_perceptual: float, lam_pixel: float,
                         target_margin: float, reduction: str) -> jax.Array:
    """Eq. (4): (M_i(x') - T)^2 + lam' sum_l ||C_l(x') - C_l(x)||^2 + lam ||x' - x||^2 for one image.

    The paper asks for T > 0 ("a small target value greater than zero"), but M_i(x') <= 0 is what flips the label;
    we follow the authors' code, whose default T = -2 pushes x' just past the decision boundary.
    """
    margin_term = jnp.square(multiclass_margin(logits, target) - target_margin)
    return (margin_term + lam_perceptual * perceptual_distance(acts, ref_acts, reduction)
            + lam_pixel * squared_distance(x_adv, x, reduction))
