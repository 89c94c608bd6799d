"""SmoothGrad (Smilkov et al. 2017, Eq. 3): the mean of |dC_t/dx| over noisy copies x + N(0, sigma^2), sigma =
``noise_level`` times the image's max - min (the paper's and PAIR saliency's noise level; Captum's ``NoiseTunnel``
over ``Saliency`` with that stdev computes the same mean); max over channels."""

import jax
import jax.numpy as jnp

from perturb_jax.methods import common

OPTIONS = {
    "samples": common.Option(50, "Smilkov et al. (n = 50; Captum's default is 5)", minimum=1),
    "noise_level": common.Option(0.15, "Smilkov et al. 10-20%, PAIR saliency 0.15 (of max - min)", minimum=0.0),
}


def noise(key, images, samples: int, noise_level: float) -> jax.Array:
    """(samples, B, H, W, C) Gaussian noise, each image's scaled by noise_level * (max - min) of that image."""
    spread = images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))
    unit = jax.random.normal(key, (samples, *images.shape), images.dtype)
    return unit * (noise_level * spread)[None, :, None, None, None]


def mean_abs_gradient(model, images, targets, noises, chunk_size):
    """mean_i |dC_t/dx (x + noises[i])|, (B, H, W, C)."""
    samples = noises.shape[0]
    kernels = model.input_grad_kernels()  # once, outside chunked_sum's loop (common.input_gradient)

    def chunk(eps, valid):
        k = eps.shape[0]
        flat = (images[None] + eps).reshape(-1, *images.shape[1:])
        grads = common.input_gradient(model, flat, jnp.tile(targets, k), grad_kernels=kernels)
        grads = jnp.abs(grads).reshape(k, *images.shape)
        return jnp.tensordot(valid, grads, axes=1)

    per_pass = common.samples_per_pass(chunk_size, images.shape[0], samples)
    return common.chunked_sum(chunk, noises, per_pass) / samples


def explain(model, images, targets, key, options):
    eps = noise(key, images, options["samples"], options["noise_level"])
    attr = mean_abs_gradient(model, images, targets, eps, options["chunk_size"])
    return {"saliency": attr.max(axis=-1)}


METHOD = common.Method("smoothgrad", explain, OPTIONS, "Smilkov et al. 2017; Captum NoiseTunnel(Saliency)")
