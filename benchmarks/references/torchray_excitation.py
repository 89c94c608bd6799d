"""TorchRay's excitation backprop (``excitation_backprop``, ``contrastive_excitation_backprop``) on the torch
replica at the options of ``perturb_jax.methods.excitation_backprop``: ``fn(torch_model, images_nchw, targets,
**options) -> (B, H, W) numpy``. Not run on its own:

    python -m pytest tests/test_method_excitation_backprop.py
    python -m benchmarks.methods --methods=excitation_backprop
"""

import contextlib
import importlib.util
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

# TorchRay's module imports torchvision's ResNet classes (only to patch ResNets' skip connections); where
# torchvision is not installed, stand-ins are put in ``sys.modules`` for that import and taken out after it.
_STAND_IN_MODULES = ("torchvision", "torchvision.models", "torchvision.models.resnet")


@contextlib.contextmanager
def torchvision_stand_in():
    """Where ``import torchvision`` fails: ``torchvision.models.resnet`` with placeholder ``ResNet``,
    ``Bottleneck`` and ``BasicBlock`` classes while the block runs; ``sys.modules`` as before afterwards."""
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    saved = {name: sys.modules.get(name) for name in _STAND_IN_MODULES}
    resnet = types.ModuleType("torchvision.models.resnet")
    for name in ("ResNet", "Bottleneck", "BasicBlock"):
        setattr(resnet, name, type(name, (), {}))
    models = types.ModuleType("torchvision.models")
    models.resnet = resnet
    package = types.ModuleType("torchvision")
    package.models = models
    sys.modules.update(zip(_STAND_IN_MODULES, (package, models, resnet)))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


with torchvision_stand_in():
    from torchray.attribution import excitation_backprop as _ebp


def excitation_backprop(torch_model, images_nchw: torch.Tensor, targets: torch.Tensor,
                        saliency_layer: str = "features.39", contrast_layer: str = "classifier.4",
                        contrastive: bool = False, upsample: str = "bilinear", resize: bool = True,
                        **options) -> np.ndarray:
    """TorchRay's map at the module named ``saliency_layer`` (contrastive: contrast at ``contrast_layer``, the
    last layer ``classifier.6`` negated), resized to the image with mode ``upsample`` where ``resize``, else at
    the layer's resolution. TorchRay resizes bilinearly itself; its ``resize_saliency`` passes
    ``align_corners=False``, which torch refuses for ``nearest``, so that mode is resized here with
    ``F.interpolate``. The parameters' ``requires_grad``, which TorchRay turns off, are restored."""
    del options
    requires_grad = [p.requires_grad for p in torch_model.parameters()]
    targets = torch.as_tensor(targets, dtype=torch.long)
    images = images_nchw.detach().clone()
    by_torchray = resize and upsample == "bilinear"
    try:
        if contrastive:
            maps = _ebp.contrastive_excitation_backprop(
                torch_model, images, targets, saliency_layer=saliency_layer, contrast_layer=contrast_layer,
                classifier_layer="classifier.6", resize=by_torchray, resize_mode=upsample)
        else:
            maps = _ebp.excitation_backprop(torch_model, images, targets, saliency_layer=saliency_layer,
                                            resize=by_torchray, resize_mode=upsample)
    finally:
        for p, flag in zip(torch_model.parameters(), requires_grad):
            p.requires_grad_(flag)
    maps = maps.detach()
    if resize and not by_torchray:
        maps = F.interpolate(maps, tuple(images.shape[2:]), mode=upsample)
    return maps[:, 0].numpy()
