"""Superpixels of the training images, computed on the host (paper Sec. 2.2).

The corruption network's pixel probabilities are averaged over each superpixel, and each superpixel is masked as a
whole. The paper segments with SLIC (Achanta et al. 2012, its reference [11]); we use scikit-image's ``slic``.
Segment ids are uint8, so an image has at most ``max_segments`` <= 256 superpixels.
"""

import concurrent.futures
import multiprocessing

import numpy as np
from skimage.segmentation import slic as _skimage_slic

_TASK_IMAGES = 64  # images per task sent to a worker process.


def _merge_smallest(labels: np.ndarray, max_segments: int) -> np.ndarray:
    """``labels`` (consecutive from 0) with its smallest segments merged until ``max_segments`` remain.

    Each merge folds the smallest segment (ties: the lowest id) into the 4-neighbour segment sharing the longest
    border with it (ties: the lowest id), so merged segments stay connected; ids are then made consecutive again.
    """
    labels = labels.copy()
    sizes = np.bincount(labels.ravel()).astype(np.int64)
    alive = sizes > 0
    while alive.sum() > max_segments:
        small = int(np.argmin(np.where(alive, sizes, np.iinfo(np.int64).max)))
        a = np.concatenate([labels[:, :-1].ravel(), labels[:-1].ravel(), labels[:, 1:].ravel(), labels[1:].ravel()])
        b = np.concatenate([labels[:, 1:].ravel(), labels[1:].ravel(), labels[:, :-1].ravel(), labels[:-1].ravel()])
        border = np.bincount(b[(a == small) & (b != small)], minlength=len(sizes))
        target = int(np.argmax(border))
        labels[labels == small] = target
        sizes[target] += sizes[small]
        alive[small] = False
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def slic(image: np.ndarray, n_segments: int, compactness: float, sigma: float, max_segments: int) -> np.ndarray:
    """SLIC superpixels (paper Sec. 2.2, [11]) of one uint8 RGB image (H, W, 3): uint8 ids (H, W), 0..S-1.

    ``skimage.segmentation.slic`` with connectivity enforced; its labels are renumbered consecutively. Where it
    returns more than ``max_segments`` segments, the smallest are merged into their neighbour across the longest
    shared border until ``max_segments`` remain (deterministic; rare when ``n_segments`` is well below the cap).
    """
    if not 1 <= max_segments <= 256:
        raise ValueError(f"config.slic.max_segments: must be in 1-256 (segment ids are uint8), got {max_segments}")
    labels = _skimage_slic(image, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0,
                           enforce_connectivity=True, channel_axis=-1)
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    if labels.max() >= max_segments:
        labels = _merge_smallest(labels, max_segments)
    return labels.astype(np.uint8)


def _slic_many(images: np.ndarray, n_segments: int, compactness: float, sigma: float,
               max_segments: int) -> np.ndarray:
    """``slic`` of each image of ``images`` (N, H, W, 3), stacked (N, H, W)."""
    out = np.empty(images.shape[:3], np.uint8)
    for i, image in enumerate(images):
        out[i] = slic(image, n_segments, compactness, sigma, max_segments)
    return out


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A pool of ``workers`` fresh processes ('forkserver': safe when the caller has JAX or TensorFlow loaded).

    As with 'spawn', each process imports the caller's main module (not its ``__main__`` block) when it starts.
    """
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))


def slic_batch(images: np.ndarray, n_segments: int, compactness: float, sigma: float, max_segments: int,
               workers: int = 0, executor: concurrent.futures.Executor | None = None) -> np.ndarray:
    """``slic`` of each image of ``images`` uint8 (N, H, W, 3): uint8 (N, H, W) (paper Sec. 2.2).

    ``workers`` 0 or 1 runs in this process; more starts a ``process_pool`` for this call. ``executor`` (e.g. a
    ``process_pool`` kept across calls) is used instead when given. The result does not depend on either.
    """
    args = (n_segments, compactness, sigma, max_segments)
    if len(images) == 0 or (executor is None and workers <= 1):
        return _slic_many(images, *args)
    if executor is None:
        with process_pool(workers) as pool:
            return slic_batch(images, *args, executor=pool)
    pieces = np.array_split(images, -(-len(images) // _TASK_IMAGES))
    return np.concatenate([f.result() for f in [executor.submit(_slic_many, p, *args) for p in pieces]])
