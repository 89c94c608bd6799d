"""RISE (Petsiuk et al. 2018, Eq. 6): S_t = 1/(N p) sum_i P_t(x * M_i) M_i over N random masks M_i, each a random
binary ``num_cells`` x ``num_cells`` grid (a cell is 1 with probability ``p``) upsampled bilinearly to
(num_cells + 1) cells' size and cropped at a random shift of less than one cell. As TorchRay's ``rise`` (the
reference library), whose differences from the paper we follow: ``explain``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from perturb_jax.methods import common

OPTIONS = {
    "num_masks": common.Option(8000, "TorchRay rise (num_masks)", minimum=1),
    "num_cells": common.Option(7, "TorchRay rise (num_cells)", minimum=2),
    "p": common.Option(0.5, "TorchRay rise (p: probability that a grid cell is 1)", minimum=0.0),
    "score": common.Option("sigmoid", "TorchRay rise (torch.sigmoid of the logits); softmax is the paper's P_t",
                           choices=("sigmoid", "softmax")),
}


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in): torch ``F.interpolate(mode='bilinear', align_corners=False)`` along one axis."""
    src = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), lo), 1 - frac)
    np.add.at(matrix, (np.arange(size_out), hi), frac)
    return matrix


def cell_size(size: int, num_cells: int) -> int:
    """TorchRay's cell: ceil(size / num_cells) pixels; shifts are drawn from [0, cell_size)."""
    return -(-size // num_cells)


def upsampling_matrix(size: int, num_cells: int) -> np.ndarray:
    """(size + cell_size, num_cells): TorchRay's ``_upsample_reflect`` of a grid axis to size + one cell (reflect
    padding by one cell, bilinear upsampling by ceil((size + cell) / num_cells), the padding cut off)."""
    up = size + cell_size(size, num_cells)
    factor = -(-up // num_cells)
    reflect = np.zeros((num_cells + 2, num_cells))
    rows = np.concatenate([[1], np.arange(num_cells), [num_cells - 2]])
    reflect[np.arange(num_cells + 2), rows] = 1
    return (_bilinear_matrix(num_cells + 2, factor * (num_cells + 2)) @ reflect)[factor:factor + up]


def masks_from_grids(grids: jax.Array, shifts: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(N, n, n) binary grids and (N, 2) shifts (rows, columns) -> (N, H, W) masks: the upsampled grid cropped at
    the shift (TorchRay: ``masks_up[i, :, shift_x:shift_x + H, shift_y:shift_y + W]``)."""
    n = grids.shape[-1]
    up_h = jnp.asarray(upsampling_matrix(size[0], n), jnp.float32)
    up_w = jnp.asarray(upsampling_matrix(size[1], n), jnp.float32)
    rows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(up_h, s, size[0]))(shifts[:, 0])
    cols = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(up_w, s, size[1]))(shifts[:, 1])
    hp = jax.lax.Precision.HIGHEST
    return jnp.einsum("nhi,nij,nwj->nhw", rows, grids.astype(jnp.float32), cols, precision=hp)


def random_masks(key_data: jax.Array, num_cells: int, p: float, size: tuple[int, int]) -> jax.Array:
    """(N, H, W) masks, one from each key (``jax.random.key_data`` rows, (N, ...))."""

    def draw(data):
        k_grid, k_h, k_w = jax.random.split(jax.random.wrap_key_data(data), 3)
        grid = jax.random.uniform(k_grid, (num_cells, num_cells)) < p
        shift = jnp.stack([jax.random.randint(k_h, (), 0, cell_size(size[0], num_cells)),
                           jax.random.randint(k_w, (), 0, cell_size(size[1], num_cells))])
        return grid, shift

    grids, shifts = jax.vmap(draw)(key_data)
    return masks_from_grids(grids, shifts, size)


def mask_keys(key: jax.Array, num_masks: int) -> jax.Array:
    """(N, ...) key data: mask i is drawn from row i."""
    return jax.random.key_data(jax.random.split(key, num_masks))


def masks(key: jax.Array, size: tuple[int, int], num_masks: int, num_cells: int, p: float) -> jax.Array:
    """(N, H, W): the masks ``explain`` draws for ``key`` (to give a reference the same ones)."""
    return random_masks(mask_keys(key, num_masks), num_cells, p, tuple(size))


def summed_saliency(score_fn, images, targets, xs, to_masks, per_pass):
    """sum_i score_fn(x * M_i, t) M_i per image, (B, H, W), over masks ``to_masks(xs[i:i+per_pass])``, ``per_pass``
    masks (``per_pass`` x B evaluations of ``score_fn``) at a time; ``score_fn(images, targets) -> (N,)``."""
    b = images.shape[0]

    def chunk(xs_chunk, valid):
        m = to_masks(xs_chunk)
        k = m.shape[0]
        masked = (m[:, None, :, :, None] * images[None]).reshape(k * b, *images.shape[1:])
        scores = score_fn(masked, jnp.tile(targets, k)).reshape(k, b)
        return jnp.einsum("kb,khw->bhw", scores * valid[:, None], m, precision=jax.lax.Precision.HIGHEST)

    return common.chunked_sum(chunk, xs, per_pass)


def saliency_from_masks(score_fn, images, targets, given, chunk_size):
    """TorchRay's map for ``given`` (N, H, W) masks: sum_i score_fn(x * M_i, t) M_i / N."""
    per_pass = common.samples_per_pass(chunk_size, images.shape[0], given.shape[0])
    return summed_saliency(score_fn, images, targets, given, lambda m: m, per_pass) / given.shape[0]


def model_score(model, score: str):
    """score_fn(images, targets) -> (N,): sigmoid (TorchRay) or softmax (paper) of the target's logit."""

    def score_fn(images, targets):
        logits = model(images)[0]
        probs = jax.nn.sigmoid(logits) if score == "sigmoid" else jax.nn.softmax(logits, axis=-1)
        return jnp.take_along_axis(probs, targets[:, None], axis=1)[:, 0]

    return score_fn


def explain(model, images, targets, key, options):
    """As TorchRay's ``rise`` (the reference library), which differs from the paper in two ways that we follow:
    P_t is the sigmoid of the logit (``torch.sigmoid(model(...))``; option ``score="softmax"`` is the paper's class
    probability), and the sum is divided by N, not N p (a constant factor). TorchRay's grid is reflection-padded by
    one cell before the upsampling (``_upsample_reflect``); masks multiply the normalised image, so a 0 is the mean
    colour. Our masks come from the PRNG key, one key per mask, so the map does not depend on ``chunk_size``."""
    b, h, w, _ = images.shape
    n = options["num_masks"]
    per_pass = common.samples_per_pass(options["chunk_size"], b, n)
    total = summed_saliency(model_score(model, options["score"]), images, targets, mask_keys(key, n),
                            lambda k: random_masks(k, options["num_cells"], options["p"], (h, w)), per_pass)
    return {"saliency": total / n}


METHOD = common.Method("rise", explain, OPTIONS, "Petsiuk et al. 2018; TorchRay rise")
