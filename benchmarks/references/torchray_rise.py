"""TorchRay's RISE (``torchray.attribution.rise``) on the torch replica: with TorchRay's own masks (a seed) or
with given masks (its ``filter_masks``), so that ``perturb_jax.methods.rise`` can be fed the very same masks. Not run
on its own:

    python -m pytest tests/test_method_rise.py
    python -m benchmarks.methods --methods=rise
"""

import numpy as np
import torch
from torchray.attribution import rise as torchray_rise


def masks(num_masks, num_cells, p, size, seed=0, batch_size=32):
    """The masks TorchRay's ``rise(seed=seed, batch_size=batch_size)`` draws, with the grids and shifts they come
    from: per chunk of ``batch_size`` masks, the grids (``torch.rand < p``) and then the row and column shifts,
    upsampled by TorchRay's ``_upsample_reflect``. Returns numpy (N, H, W) masks, (N, n, n) grids, (N, 2) shifts."""
    height, width = size
    cells = [-(-s // num_cells) for s in size]
    up_size = (height + cells[0], width + cells[1])
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    out_masks, out_grids, out_shifts = [], [], []
    for start in range(0, num_masks, batch_size):
        count = min(batch_size, num_masks - start)
        grid = (torch.rand(count, 1, num_cells, num_cells) < p).float()
        up = torchray_rise._upsample_reflect(grid, up_size)
        rows = torch.randint(0, cells[0], (count,))
        cols = torch.randint(0, cells[1], (count,))
        for i in range(count):
            out_masks.append(up[i, 0, rows[i]:rows[i] + height, cols[i]:cols[i] + width])
        out_grids.append(grid[:, 0])
        out_shifts.append(torch.stack([rows, cols], dim=1))
    torch.set_rng_state(state)
    return (torch.stack(out_masks).numpy(), torch.cat(out_grids).numpy(), torch.cat(out_shifts).numpy())


def saliency(torch_model, images_nchw, targets, given_masks=None, *, num_masks=8000, num_cells=7, p=0.5, seed=0,
             batch_size=32):
    """TorchRay ``rise_class`` -> numpy (B, H, W): the target's map, with ``given_masks`` (N, H, W) when given
    (then ``num_masks`` is their number), else TorchRay's masks from ``seed``."""
    filter_masks = None
    if given_masks is not None:
        filter_masks = torch.as_tensor(np.asarray(given_masks, np.float32))[:, None]
        num_masks = len(given_masks)
    out = torchray_rise.rise_class(
        torch_model, torch.as_tensor(np.asarray(images_nchw, np.float32)), target=[int(t) for t in targets],
        seed=seed, num_masks=num_masks, num_cells=num_cells, filter_masks=filter_masks, batch_size=batch_size, p=p)
    return out[:, 0].numpy()
