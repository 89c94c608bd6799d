"""TorchRay's ``extremal_perturbation`` on the torch replica, one image at a time (TorchRay takes one), at the options
of ``perturb_jax.methods.extremal_perturbation``; the map as TorchRay's attribution benchmark makes it (each mask
smoothed, ``smooth`` x the shorter side, then summed over areas). Not run on its own:

    python -m pytest tests/test_method_extremal_perturbation.py
    python -m benchmarks.methods --methods=extremal_perturbation
"""

import numpy as np
import torch
from torchray.attribution import extremal_perturbation as ep
from torchray.utils import imsmooth

from perturb_jax.methods import extremal_perturbation as ours

# What TorchRay fixes inside ``extremal_perturbation`` (or ``Perturbation``'s default): these options cannot differ.
FIXED = {"max_blur": 20.0, "learning_rate": 0.01, "momentum": 0.9, "regul_weight": 300.0, "regul_growth": 1.0035}


# On a shared 2-core machine, run torch with one thread (``torch.set_num_threads(1)``): two OpenMP threads made it
# 10-30x slower there.
def run(torch_model, images_nchw, targets, **options) -> dict:
    """-> {"masks": (B, A, H, W) before smoothing, "saliency": (B, H, W), "image_areas": (B, A) mask means} as numpy
    (TorchRay returns the masks cropped to the image, not its full masks with their margin)."""
    opts = {k: o.default for k, o in ours.OPTIONS.items()} | options
    for k, v in FIXED.items():
        if opts[k] != v:
            raise ValueError(f"TorchRay fixes {k} = {v}; got {opts[k]}")
    masks = []
    for image, target in zip(torch.as_tensor(np.asarray(images_nchw)), np.asarray(targets)):
        mask, _ = ep.extremal_perturbation(
            torch_model, image[None], int(target), areas=[float(a) for a in opts["areas"]],
            perturbation=ep.BLUR_PERTURBATION, max_iter=int(opts["iterations"]), num_levels=int(opts["num_levels"]),
            step=int(opts["step"]), sigma=opts["sigma"], jitter=bool(opts["jitter"]),
            variant=ep.PRESERVE_VARIANT, reward_func=ep.simple_reward, resize=False, smooth=0)
        masks.append(mask[:, 0].detach())
    masks = torch.stack(masks)
    smoothed = masks
    if opts["smooth"] > 0:  # what ``extremal_perturbation(..., smooth=)`` does to its (A, 1, H, W) masks
        smoothed = torch.stack([imsmooth(m[:, None], sigma=opts["smooth"] * min(m.shape[-2:]),
                                         padding_mode="constant")[:, 0] for m in masks])
    return {"masks": masks.numpy(), "saliency": smoothed.sum(dim=1).numpy(),
            "image_areas": masks.mean(dim=(2, 3)).numpy()}
