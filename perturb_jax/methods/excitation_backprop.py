"""Excitation backprop (Zhang et al. 2016/2018, "Top-down neural attention by excitation backprop"), as TorchRay's
``excitation_backprop`` and ``contrastive_excitation_backprop`` (the contrastive variant: ``excitation_map``). The
target's one-hot is passed down as a winning probability: a linear layer (convolution, linear, average pool) passes
to its input j P(a_j) = x_j sum_i W+_ij P(a_i) / sum_k W+_ik x_k (the paper's P(a_j|a_i) = Z_i x_j W+_ij; the
model's ``backward="excitation"``). The map is the sum over channels of P at the saliency layer's output, upsampled
to the image.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from perturb_jax.methods import common

OPTIONS = {
    "saliency_layer": common.Option("features.39", "TorchRay's VGG16 benchmark: pool4 (features.23); pool4 of "
                                    "VGG19_bn", layer=True),
    "contrast_layer": common.Option("classifier.4", "TorchRay's VGG16 benchmark: the second fully connected "
                                    "layer's ReLU", layer=True),
    "contrastive": common.Option(False, "Zhang et al.'s contrastive top-down attention; TorchRay's "
                                 "contrastive_excitation_backprop"),
    "upsample": common.Option("bilinear", "TorchRay's resize_mode", choices=common.UPSAMPLE_MODES),
}


@jax.custom_vjp
def subtract_on_backward(a: jax.Array, contrast: jax.Array) -> jax.Array:
    """Returns ``a``; on the way back the gradient g becomes g - ``contrast`` (TorchRay's ``_InjectContrast``)."""
    return a


def _subtract_fwd(a, contrast):
    return a, contrast


def _subtract_bwd(contrast, g):
    return g - contrast, jnp.zeros_like(contrast)


subtract_on_backward.defvjp(_subtract_fwd, _subtract_bwd)


def negated_classifier(model):
    """A copy of ``model`` whose last linear layer has weight -W (bias unchanged); ``model`` is left as it is."""
    negated = nnx.clone(model)
    kernel = negated.fc[-1].kernel
    kernel[...] = -kernel[...]
    return negated


def excitation(model, images, targets, layer: str, hooks: dict | None = None) -> jax.Array:
    """The excitation p at the output of ``layer`` for the one-hot seed of ``targets``, (B, ...)."""
    return common.layer_gradient(model, images, targets, layer, backward="excitation", hooks=hooks)[1]


def excitation_map(model, images, targets, saliency_layer: str, contrast_layer: str,
                   contrastive: bool) -> jax.Array:
    """sum_c p at ``saliency_layer``, (B, h, w), before the clamp of the contrastive variant and any resizing.

    Contrastive: p at ``contrast_layer`` with the last weight negated is the contrast, subtracted from p arriving
    there in a second pass with the true weights. Zhang et al.'s contrastive top-down attention subtracts, at the
    contrast layer, the probability of the "non-target" made by negating the last layer's weight (W -> -W), and
    keeps the positive part of the map (``excitation_backprop``'s clamp)."""
    if contrastive:
        contrast = excitation(negated_classifier(model), images, targets, contrast_layer)
        if contrast_layer == saliency_layer:
            p = excitation(model, images, targets, saliency_layer) - contrast
        else:
            hooks = {contrast_layer: lambda a: subtract_on_backward(a, contrast)}
            p = excitation(model, images, targets, saliency_layer, hooks)
    else:
        p = excitation(model, images, targets, saliency_layer)
    if p.ndim != 4:
        raise ValueError(f"excitation backprop needs a convolutional saliency layer, got {saliency_layer} of "
                         f"shape {p.shape}")
    return p.sum(axis=-1)


def excitation_backprop(model, images, targets, saliency_layer: str, contrast_layer: str, contrastive: bool,
                        upsample: str) -> jax.Array:
    """The upsampled map, (B, H, W); the contrastive one clamped at 0 (TorchRay's contrastive saliency)."""
    maps = excitation_map(model, images, targets, saliency_layer, contrast_layer, contrastive)
    if contrastive:
        maps = jnp.maximum(maps, 0.0)
    return common.upsample(maps, images.shape[1:3], upsample)


def explain(model, images, targets, key, options):
    del key
    return {"saliency": excitation_backprop(model, images, targets, options["saliency_layer"],
                                            options["contrast_layer"], options["contrastive"],
                                            options["upsample"])}


METHOD = common.Method("excitation_backprop", explain, OPTIONS,
                       "Zhang et al. 2016/2018; TorchRay excitation_backprop, contrastive_excitation_backprop")
