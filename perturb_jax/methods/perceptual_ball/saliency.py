"""Saliency maps: the perturbation's per-pixel norm (Sec. 3), its guided variant, and the input gradient."""

import jax
import jax.numpy as jnp
import numpy as np


def perturbation_norm(x_adv: jax.Array, x: jax.Array) -> jax.Array:
    """Per-pixel L2 norm over channels of x' - x, (..., H, W, C) -> (..., H, W).

    The authors' code takes sqrt(mean_c (x' - x)^2), a constant multiple of this: every thresholding strategy of
    ``eval.boxes`` is invariant to a positive rescaling of the map, so both give the same boxes.
    """
    return jnp.sqrt(jnp.sum(jnp.square(x_adv - x), axis=-1))


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The 1-D kernel of ``scipy.ndimage.gaussian_filter`` (radius ``int(truncate * sigma + 0.5)``)."""
    radius = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_smooth(saliency: jax.Array, sigma: float) -> jax.Array:
    """``scipy.ndimage.gaussian_filter(saliency, sigma)`` (mode 'reflect') on an (H, W) map; sigma 0 is a no-op."""
    if sigma <= 0:
        return saliency
    k = jnp.asarray(gaussian_kernel(sigma), saliency.dtype)
    r = (k.shape[0] - 1) // 2
    h, w = saliency.shape
    # scipy's 'reflect' repeats the edge pixel (numpy's 'symmetric'); a radius past the map needs repeated padding.
    padded = jnp.pad(saliency, r, mode="symmetric") if r <= min(h, w) else _pad_symmetric_wide(saliency, r)
    rows = jax.vmap(lambda col: jnp.convolve(col, k, mode="valid"), in_axes=1, out_axes=1)(padded)
    return jax.vmap(lambda row: jnp.convolve(row, k, mode="valid"))(rows)


def _pad_symmetric_wide(a: jax.Array, r: int) -> jax.Array:
    idx_h = np.abs((np.arange(-r, a.shape[0] + r) + 0.5) % (2 * a.shape[0]) - a.shape[0]) // 1
    idx_w = np.abs((np.arange(-r, a.shape[1] + r) + 0.5) % (2 * a.shape[1]) - a.shape[1]) // 1
    idx_h = (a.shape[0] - 1 - idx_h).astype(int)
    idx_w = (a.shape[1] - 1 - idx_w).astype(int)
    return a[idx_h][:, idx_w]


def gradient_magnitude(grad: jax.Array) -> jax.Array:
    """Simonyan et al.'s saliency |dC_i/dx|: maximum absolute value over channels (TorchRay's reduction)."""
    return jnp.abs(grad).max(axis=-1)


def guided(perturbation: jax.Array, grad: jax.Array) -> jax.Array:
    """Guided variant (Sec. 3): the perturbation map times the normalised input gradient of C_i.

    The paper does not say how the gradient is normalised. We take its per-pixel L2 norm over channels (as for the
    perturbation) divided by its maximum over the image, so the factor lies in [0, 1]. Any positive global scaling
    gives the same boxes (the thresholds are scale-invariant); what matters is the per-pixel reduction.
    """
    g = jnp.sqrt(jnp.sum(jnp.square(grad), axis=-1))
    g_max = g.max(axis=(-2, -1), keepdims=True)  # per image, also for a batch (..., H, W)
    return perturbation * g / jnp.maximum(g_max, jnp.finfo(g.dtype).tiny)
