"""Grad-CAM (Selvaraju et al. 2017, Eq. 1-2): ReLU(sum_c alpha_c A^c), alpha_c the spatial mean of dC_t/dA^c at a
convolutional layer, upsampled to the image (Captum ``LayerGradCam(relu_attributions=True)`` then
``LayerAttribution.interpolate``)."""

import jax.numpy as jnp

from perturb_jax.methods import common

OPTIONS = {
    "layer": common.Option("features.51", "Selvaraju et al.: the last convolutional layer; ReLU 16 of VGG19_bn "
                           "(TorchRay's VGG16 benchmark: the last ReLU)", layer=True),
    "upsample": common.Option("bilinear", "Selvaraju et al.'s code (bilinear); Captum's interpolate default is "
                              "nearest", choices=common.UPSAMPLE_MODES),
}


def grad_cam(model, images, targets, layer: str, upsample: str, backward: str = "plain"):
    """The upsampled Grad-CAM map, (B, H, W)."""
    acts, grads = common.layer_gradient(model, images, targets, layer, backward=backward)
    if acts.ndim != 4:
        raise ValueError(f"Grad-CAM needs a convolutional layer, got {layer} of shape {acts.shape}")
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cam = jnp.maximum((weights * acts).sum(axis=-1), 0.0)
    return common.upsample(cam, images.shape[1:3], upsample)


def explain(model, images, targets, key, options):
    del key
    return {"saliency": grad_cam(model, images, targets, options["layer"], options["upsample"])}


METHOD = common.Method("grad_cam", explain, OPTIONS, "Selvaraju et al. 2017; Captum LayerGradCam")
