"""Integrated Gradients (Sundararajan et al. 2017, Eq. 1): (x - x0) * int_0^1 dC_t/dx(x0 + a (x - x0)) da, the
integral by Gauss-Legendre quadrature on [0, 1] (Captum's default), baseline x0 = 0 in normalised space; max |.|
over channels."""

import jax.numpy as jnp
import numpy as np

from perturb_jax.methods import common

OPTIONS = {
    "steps": common.Option(50, "Captum IntegratedGradients (n_steps)", minimum=1),
    "quadrature": common.Option("gausslegendre", "Captum (method); riemann_trapezoid is Captum's Riemann sum",
                                choices=("gausslegendre", "riemann_trapezoid")),
}


def quadrature(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1], as Captum's ``approximation_parameters``: Gauss-Legendre's mapped from [-1, 1];
    ``riemann_trapezoid`` n equally spaced nodes from 0 to 1 with weights 1/n, halved at both ends (Captum's, whose
    weights sum to (n - 1)/n: the trapezoid rule's 1/(n - 1) spacing scaled by (n - 1)/n)."""
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    if steps < 2:
        raise ValueError("riemann_trapezoid needs at least 2 steps (as Captum)")
    nodes = np.linspace(0, 1, steps)
    weights = np.full(steps, 1.0 / steps)
    weights[[0, -1]] *= 0.5
    return nodes, weights


def attributions(model, images, targets, steps, rule, chunk_size):
    """The (B, H, W, C) attributions; their sum over pixels approximates C_t(x) - C_t(0) (completeness)."""
    nodes, weights = (jnp.asarray(a, images.dtype) for a in quadrature(steps, rule))
    kernels = model.input_grad_kernels()  # once, outside chunked_sum's loop (common.input_gradient)

    def chunk(alphas_and_weights, valid):
        alphas, w = alphas_and_weights[:, 0], alphas_and_weights[:, 1] * valid
        k = alphas.shape[0]
        path = alphas[:, None, None, None, None] * images[None]
        flat = path.reshape(-1, *images.shape[1:])
        grads = common.input_gradient(model, flat, jnp.tile(targets, k), grad_kernels=kernels)
        grads = grads.reshape(k, *images.shape)
        return jnp.tensordot(w, grads, axes=1)

    per_pass = common.samples_per_pass(chunk_size, images.shape[0], steps)
    summed = common.chunked_sum(chunk, jnp.stack([nodes, weights], axis=1), per_pass)
    return images * summed


def explain(model, images, targets, key, options):
    del key
    attr = attributions(model, images, targets, options["steps"], options["quadrature"], options["chunk_size"])
    return {"saliency": common.max_abs_over_channels(attr)}


METHOD = common.Method("integrated_gradients", explain, OPTIONS,
                       "Sundararajan et al. 2017; Captum IntegratedGradients")
