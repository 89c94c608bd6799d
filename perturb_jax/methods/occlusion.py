"""Occlusion (Zeiler and Fergus 2014): slide a square of the baseline value (0 in normalised space: the mean
colour) over the image; each pixel gets the mean drop of C_t over the windows that cover it (Captum ``Occlusion``,
sliding window over all channels)."""

import jax.numpy as jnp
import numpy as np

from perturb_jax.methods import common

OPTIONS = {
    "window": common.Option(8, "our choice: 1/8 of the 64-pixel embedded image (ImageNet variant: 32 of 224)",
                            minimum=1),
    "stride": common.Option(4, "our choice: half the window (ImageNet variant: 8)", minimum=1),
}


def _offsets(size: int, window: int, stride: int) -> range:
    """Captum's window corners along one axis: ceil((size - window) / stride) + 1 of them, 0, stride, ..., so the
    last window reaches the far edge (and is cut off there when the stride does not divide size - window)."""
    return range(0, stride * (-(-max(size - window, 0) // stride)) + 1, stride)


def windows(height: int, width: int, window: int, stride: int) -> np.ndarray:
    """(P, H, W) 0/1 masks of every window position, as Captum places them (``_offsets``)."""
    ys, xs = _offsets(height, window, stride), _offsets(width, window, stride)
    masks = np.zeros((len(ys) * len(xs), height, width), np.float32)
    for i, (y, x) in enumerate((y, x) for y in ys for x in xs):
        masks[i, y:y + window, x:x + window] = 1
    return masks


def explain(model, images, targets, key, options):
    del key
    b, h, w, _ = images.shape
    masks = jnp.asarray(windows(h, w, options["window"], options["stride"]))
    base = common.target_logits(model, images, targets)

    def chunk(m, valid):
        k = m.shape[0]
        occluded = (images[None] * (1 - m)[:, None, :, :, None]).reshape(-1, *images.shape[1:])
        drop = base[None] - common.target_logits(model, occluded, jnp.tile(targets, k)).reshape(k, b)
        return jnp.einsum("kb,khw->bhw", drop * valid[:, None], m)

    per_pass = common.samples_per_pass(options["chunk_size"], b, masks.shape[0])
    total = common.chunked_sum(chunk, masks, per_pass)
    count = masks.sum(axis=0)
    return {"saliency": jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)}


METHOD = common.Method("occlusion", explain, OPTIONS, "Zeiler and Fergus 2014; Captum Occlusion")
