"""torchattacks' DeepFool (``torchattacks.DeepFool``) on the torch replica, in the [0, 1] pixel space it attacks in:
the replica is wrapped in a module that normalises its input with ``mean`` and ``std``. Not run on its own:

    python -m pytest tests/test_method_deepfool.py
    python -m benchmarks.methods --methods=deepfool
"""

import numpy as np
import torch
import torchattacks


class Normalised(torch.nn.Module):
    """model((pixels - mean) / std), NCHW."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[None, :, None, None])
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[None, :, None, None])

    def forward(self, pixels):
        return self.model((pixels - self.mean) / self.std)


def deepfool(torch_model, images_nchw, targets, *, mean, std, steps=50, overshoot=0.02, weight_grads=False):
    """torchattacks ``DeepFool(steps, overshoot)`` on the normalised ``images_nchw`` (un-normalised to [0, 1]) with
    the targets as labels -> numpy (the map: per-pixel L2 norm over channels of adv - pixels, (B, H, W); the
    adversarial pixels, (B, C, H, W)). Unless ``weight_grads`` (what torchattacks does on a model as given), the
    weights' gradients, which the attack does not use, are not computed: same result, several times faster."""
    dtype = np.asarray(images_nchw).dtype  # float32, or float64 with a float64 replica
    mean_c = np.asarray(mean, dtype)[None, :, None, None]
    std_c = np.asarray(std, dtype)[None, :, None, None]
    pixels = torch.as_tensor(np.clip(np.asarray(images_nchw, dtype) * std_c + mean_c, 0, 1))
    wrapped = Normalised(torch_model, mean, std).to(pixels.dtype).eval()
    attack = torchattacks.DeepFool(wrapped, steps=steps, overshoot=overshoot)
    flags = [p.requires_grad for p in torch_model.parameters()]
    try:
        for p in torch_model.parameters():
            p.requires_grad_(p.requires_grad and weight_grads)
        adv = attack(pixels, torch.as_tensor(np.asarray(targets), dtype=torch.long)).detach()
    finally:
        for p, flag in zip(torch_model.parameters(), flags):
            p.requires_grad_(flag)
    return torch.linalg.vector_norm(adv - pixels, dim=1).numpy(), adv.numpy()
