"""Decoding and geometric preprocessing of an image with its boxes, as torchvision does it on PIL images.

Library: PIL (why: docs/design-notes.md). Modes (``MODES``): 'squash', torchvision's ``Resize((S, S))``
(``squash``), and 'resize_crop', ``Resize(R)`` then ``CenterCrop(S)`` (``resize_crop``). Boxes are int32 (n, 4)
inclusive pixel (ymin, xmin, ymax, xmax); resizing rounds their edges as ``scale_boxes`` says.
"""

import io

import numpy as np
from PIL import Image

MODES = ("squash", "resize_crop")
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What ``decode`` raises on a file that is not a readable image."""


def check_mode(mode: str) -> None:
    """Raises ValueError unless ``mode`` is one of ``MODES``."""
    if mode not in MODES:
        raise ValueError(f"config.data.resize must be one of {MODES}, got {mode!r}")


def decode(data: bytes) -> np.ndarray:
    """uint8 (H, W, 3) RGB from encoded bytes (JPEG, PNG, ...); raises one of ``DECODE_ERRORS`` when unreadable."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def as_boxes(boxes) -> np.ndarray:
    """int32 (n, 4) from any sequence of (ymin, xmin, ymax, xmax), empty included."""
    return np.asarray(boxes, dtype=np.int32).reshape(-1, 4)


def scale_boxes(boxes, scale_y: float, scale_x: float) -> np.ndarray:
    """Inclusive pixel boxes of an image resized by (scale_y, scale_x).

    A box covers the continuous extent [ymin, ymax + 1) x [xmin, xmax + 1); resizing scales that extent and rounds
    each edge to the nearest pixel boundary (half up), so ymin' = floor(ymin * s + 1/2) and
    ymax' = floor((ymax + 1) * s + 1/2) - 1; a box too thin for that (ymax' < ymin') becomes the one pixel holding the
    centre of its scaled extent."""
    b = as_boxes(boxes).astype(np.float64)
    scale = np.array([scale_y, scale_x])
    return _round_extents(b[:, :2] * scale, (b[:, 2:] + 1) * scale)


def _round_extents(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Inclusive pixel boxes from continuous extents [start, stop): edges rounded half up; an extent too thin to
    cover a pixel boundary becomes the pixel holding its centre."""
    lo, hi = np.floor(start + 0.5), np.floor(stop + 0.5) - 1
    centre = np.floor((start + stop) / 2)
    thin = hi < lo
    lo, hi = np.where(thin, centre, lo), np.where(thin, centre, hi)
    return np.concatenate([lo, hi], axis=1).astype(np.int32)


def normalised_to_pixels(boxes, height: int, width: int) -> np.ndarray:
    """Inclusive pixel boxes from TFDS-style normalised (ymin, xmin, ymax, xmax) extents of a height x width image."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * [height, width, height, width]
    return crop_boxes(_round_extents(b[:, :2], b[:, 2:]), 0, 0, height, width)[0]


def crop_boxes(boxes, top: int, left: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes in the height x width crop at (top, left), clipped to it, and the mask of input boxes that touch it:
    cropping shifts boxes, clips them to the crop and drops the boxes that lie wholly outside it."""
    b = as_boxes(boxes) - np.array([top, left, top, left])
    keep = (b[:, 0] <= height - 1) & (b[:, 1] <= width - 1) & (b[:, 2] >= 0) & (b[:, 3] >= 0)
    b = np.clip(b, 0, [height - 1, width - 1, height - 1, width - 1])
    return b[keep].astype(np.int32), keep


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def squash(image: np.ndarray, boxes, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """'squash': (size x size image, boxes, keep mask (all True)). ``Resize((S, S))``: both sides to S, aspect ratio
    ignored (the authors' way)."""
    h, w = image.shape[:2]
    boxes = scale_boxes(boxes, size / h, size / w)
    return _resize(image, size, size), boxes, np.ones(len(boxes), bool)


def resize_crop(image: np.ndarray, boxes, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """'resize_crop': (size x size image, boxes clipped to the crop, mask of the input boxes kept).

    ``Resize(R)`` then ``CenterCrop(S)`` with R = round(256 * S / 224) (256 for S = 224): the shorter side becomes R,
    the longer int(R * long / short) (torchvision truncates), and the crop starts at int(round((side - S) / 2))
    (Python's round, half to even, as torchvision)."""
    h, w = image.shape[:2]
    short = int(round(256 * size / 224))
    rh, rw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
    resized = _resize(image, rh, rw)[top:top + size, left:left + size]
    boxes, keep = crop_boxes(scale_boxes(boxes, rh / h, rw / w), top, left, size, size)
    return resized, boxes, keep


def make_example(image: np.ndarray, boxes_original, label: int, image_id: str, size: int, mode: str) -> dict:
    """The example dict of ``eval.datasets`` from a decoded image and its boxes in original pixels.

    Original boxes are first clipped to the image (those wholly outside are dropped); ``boxes_original`` keeps
    exactly the boxes that survive in ``boxes``, row for row.
    """
    h, w = image.shape[:2]
    boxes_original, _ = crop_boxes(boxes_original, 0, 0, h, w)
    out, boxes, keep = (squash if mode == "squash" else resize_crop)(image, boxes_original, size)
    return {"image": out, "label": int(label), "boxes": boxes, "boxes_original": boxes_original[keep],
            "original_size": (h, w), "image_id": image_id}


def skipped(image_id: str, label: int, message: str) -> dict:
    """The record of an example that could not be built: image_id, label and a one-line ``error``; no image."""
    return {"image_id": image_id, "label": int(label), "error": message}

