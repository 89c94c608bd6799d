"""Per-batch result files of the main job: written atomically, so an interrupted run resumes after the last one."""

import glob
import os

import numpy as np

from eval.boxes import unpad_boxes

def batch_path(workdir: str, split_name: str, index: int, method: str = "") -> str:
    """A batch's file: the images' records (``method`` empty) or one method's outputs for those images."""
    return os.path.join(workdir, "maps", method, f"{split_name}_{index:05d}.npz")


def write_batch(path: str, arrays: dict) -> None:
    """``np.savez`` to a hidden temporary name (no reader globs it), then an atomic rename."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def read_split(workdir: str, split_name: str, methods=()) -> dict[str, np.ndarray | list]:
    """Concatenates every batch file of a split in order, the records and each method's outputs (keys
    ``method/key``), row for row; boxes come back as lists of (n, 4) arrays."""
    out = _read_batches(os.path.join(workdir, "maps"), split_name)
    for method in methods:
        out.update({f"{method}/{k}": v for k, v in _read_batches(os.path.join(workdir, "maps", method),
                                                                 split_name).items()})
    return out


def _read_batches(directory: str, split_name: str) -> dict:
    paths = sorted(glob.glob(os.path.join(directory, f"{split_name}_[0-9]*.npz")))
    parts = [dict(np.load(p, allow_pickle=False)) for p in paths]
    if not parts:
        return {}
    out = {}
    for key in dict.fromkeys(k for p in parts for k in p):  # a batch of only unreadable images has fewer keys.
        arrays = [p[key] for p in parts if key in p]
        if key in ("boxes", "boxes_original"):
            out[key] = [b for a in arrays for b in unpad_boxes(a)]
        else:
            out[key] = np.concatenate(arrays)
    return out
