"""Builders of miniature ILSVRC files shared by the tests: encoded images, VOC XML, tar members, file stems."""

import io
import tarfile

import numpy as np
from PIL import Image


def encode_pixels(pixels: np.ndarray, fmt: str = "JPEG") -> bytes:
    """uint8 (H, W, 3) pixels encoded as ``fmt`` (JPEG at quality 95)."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, quality=95)
    return out.getvalue()


def encode(height, width, colour=(200, 30, 60), fmt="JPEG") -> bytes:
    """A plain image of one colour."""
    return encode_pixels(np.full((height, width, 3), colour, np.uint8), fmt)


def voc(objects, filename="x") -> str:
    """VOC XML text; objects: (name, xmin, ymin, xmax, ymax) 1-based inclusive."""
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    return f"<annotation><filename>{filename}</filename>{body}</annotation>"


def stem(k: int) -> str:
    """The file stem of the k-th ImageNet validation image (1-based)."""
    return f"ILSVRC2012_val_{k:08d}"


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Adds a regular file ``name`` holding ``data`` to an open tar."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
