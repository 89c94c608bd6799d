"""Captum's runs of the seven methods that follow it (``perturb_jax.methods``: gradient, guided backprop, Grad-CAM,
guided Grad-CAM, Integrated Gradients, SmoothGrad, occlusion) on the torch replica, at our options and reduced to a
map as ours are. Each is ``fn(torch_model, images_nchw, targets, **options) -> (B, H, W) numpy``; ``chunk_size``
(network evaluations per pass, as ours) sets Captum's own batching where it has one. Not run on its own:

    python -m pytest tests/test_methods_captum.py
    python -m benchmarks.methods  # all of Table 1's methods, these seven among them
"""

import numpy as np
import torch
from captum.attr import (
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)


def _per_pass(chunk_size: int, batch: int) -> int:
    """Samples (steps, noise draws, windows) per image in one pass of ``chunk_size`` evaluations, as ours."""
    return max(1, chunk_size // max(batch, 1))


def _max_abs_over_channels(attr: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) -> (B, H, W) numpy, max |.| over channels."""
    return attr.detach().abs().amax(dim=1).numpy()


def gradient(torch_model, images_nchw: torch.Tensor, targets: torch.Tensor, **options) -> np.ndarray:
    """``Saliency(abs=True)``."""
    del options
    return _max_abs_over_channels(Saliency(torch_model).attribute(images_nchw, target=targets, abs=True))


def guided_backprop(torch_model, images_nchw: torch.Tensor, targets: torch.Tensor, **options) -> np.ndarray:
    """``GuidedBackprop``."""
    del options
    return _max_abs_over_channels(GuidedBackprop(torch_model).attribute(images_nchw, target=targets))


def grad_cam(torch_model, images_nchw: torch.Tensor, targets: torch.Tensor, layer: str = "features.51",
             upsample: str = "bilinear", **options) -> np.ndarray:
    """``LayerGradCam(relu_attributions=True)`` at the module named ``layer``, then
    ``LayerAttribution.interpolate`` to the image with mode ``upsample``."""
    del options
    cam = LayerGradCam(torch_model, torch_model.get_submodule(layer)).attribute(
        images_nchw, target=targets, relu_attributions=True)
    up = LayerAttribution.interpolate(cam, tuple(images_nchw.shape[2:]), interpolate_mode=upsample)
    return up[:, 0].detach().numpy()


def guided_grad_cam(torch_model, images_nchw: torch.Tensor, targets: torch.Tensor, layer: str = "features.51",
                    upsample: str = "bilinear", **options) -> np.ndarray:
    """``GuidedGradCam`` at the module named ``layer``, ``interpolate_mode=upsample``; max |.| over channels."""
    del options
    attr = GuidedGradCam(torch_model, torch_model.get_submodule(layer)).attribute(
        images_nchw, target=targets, interpolate_mode=upsample)
    return _max_abs_over_channels(attr)


def integrated_gradients(torch_model, images_nchw: torch.Tensor, targets: torch.Tensor, steps: int = 50,
                         quadrature: str = "gausslegendre", chunk_size: int = 64, **options) -> np.ndarray:
    """``IntegratedGradients`` from the zero baseline, ``n_steps=steps``, ``method=quadrature``,
    ``internal_batch_size=chunk_size``; max |.| over channels."""
    del options
    attr = IntegratedGradients(torch_model).attribute(
        images_nchw, baselines=torch.zeros_like(images_nchw), target=targets, n_steps=steps, method=quadrature,
        internal_batch_size=max(chunk_size, images_nchw.shape[0]))
    return _max_abs_over_channels(attr)


class _GivenNoiseTunnel(NoiseTunnel):
    """``NoiseTunnel`` whose noise source returns the next draws of a given (samples, B, C, H, W) tensor instead
    of ``torch.normal``: the same inputs, order (``repeat_interleave``: image-major within a pass) and averaging
    as Captum's, with our noise."""

    def __init__(self, attribution_method, noise: torch.Tensor):
        super().__init__(attribution_method)
        self.noise, self.used = noise, 0

    def _add_noise_to_input(self, input, stdev, nt_samples_partition):
        del stdev
        eps = self.noise[self.used:self.used + nt_samples_partition]
        self.used += nt_samples_partition
        return input.repeat_interleave(nt_samples_partition, dim=0) + eps.transpose(0, 1).reshape(
            -1, *input.shape[1:])


def smoothgrad(torch_model, images_nchw: torch.Tensor, targets: torch.Tensor, noise: torch.Tensor,
               chunk_size: int = 64, **options) -> np.ndarray:
    """``NoiseTunnel(Saliency(abs=True))``, ``nt_type="smoothgrad"``, with the given (samples, B, C, H, W)
    ``noise`` (ours, ``smoothgrad.noise`` transposed to NCHW) in place of Captum's draws: Captum's ``stdevs`` is one
    float per input tensor, ours one per image, so its noise source is patched (``_GivenNoiseTunnel``); the
    per-pass batching (``nt_samples_batch_size``) and the mean over samples are Captum's own. Max over channels."""
    del options
    samples = noise.shape[0]
    tunnel = _GivenNoiseTunnel(Saliency(torch_model), noise)
    attr = tunnel.attribute(images_nchw, nt_type="smoothgrad", nt_samples=samples, stdevs=0.0,
                            nt_samples_batch_size=_per_pass(chunk_size, images_nchw.shape[0]), target=targets,
                            abs=True)
    if tunnel.used != samples:
        raise RuntimeError(f"NoiseTunnel took {tunnel.used} of the {samples} given noise draws")
    return _max_abs_over_channels(attr)


def occlusion(torch_model, images_nchw: torch.Tensor, targets: torch.Tensor, window: int = 8, stride: int = 4,
              chunk_size: int = 64, **options) -> np.ndarray:
    """``Occlusion`` with ``sliding_window_shapes=(3, window, window)``, ``strides=(3, stride, stride)``,
    ``baselines=0``, ``perturbations_per_eval`` from ``chunk_size``. The window spans all channels, so every
    channel holds the same value: the map is channel 0 (signed, as ours)."""
    del options
    with torch.no_grad():
        attr = Occlusion(torch_model).attribute(
            images_nchw, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0,
            target=targets, perturbations_per_eval=_per_pass(chunk_size, images_nchw.shape[0]))
    return attr[:, 0].numpy()


METHODS = {"gradient": gradient, "guided_backprop": guided_backprop, "grad_cam": grad_cam,
           "guided_grad_cam": guided_grad_cam, "integrated_gradients": integrated_gradients,
           "smoothgrad": smoothgrad, "occlusion": occlusion}
