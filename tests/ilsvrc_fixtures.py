"""Builders of miniature ILSVRC files shared by the tests: encoded images, VOC XML, tar members, file stems, and
random torchvision VGG19_bn weights."""

import io
import tarfile

import numpy as np
from PIL import Image

from perturb_jax.runtime.vgg import RELU_TO_TORCH_INDEX, VGG19_CFG


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


def random_state_dict(seed=0, num_classes=1000, width_divisor=16) -> dict:
    """A torchvision ``vgg19_bn`` state_dict, widths divided by ``width_divisor``, of random numpy weights and BN
    statistics."""
    rng = np.random.default_rng(seed)
    sd, c_in = {}, 3
    for k, c_out in enumerate(v // width_divisor for v in VGG19_CFG if v != "M"):
        conv = RELU_TO_TORCH_INDEX[k + 1] - 2
        sd[f"features.{conv}.weight"] = rng.normal(0, np.sqrt(2 / (9 * c_out)), (c_out, c_in, 3, 3))
        sd[f"features.{conv}.bias"] = rng.normal(0, 0.05, c_out)
        bn = f"features.{conv + 1}."
        sd[bn + "weight"], sd[bn + "bias"] = rng.uniform(0.5, 1.5, c_out), rng.normal(0, 0.2, c_out)
        sd[bn + "running_mean"], sd[bn + "running_var"] = rng.normal(0, 0.2, c_out), rng.uniform(0.5, 2.0, c_out)
        c_in = c_out
    hidden = 4096 // width_divisor
    for i, (n_in, n_out) in zip((0, 3, 6), ((c_in * 49, hidden), (hidden, hidden), (hidden, num_classes))):
        sd[f"classifier.{i}.weight"] = rng.normal(0, 0.01, (n_out, n_in))
        sd[f"classifier.{i}.bias"] = rng.normal(0, 0.05, n_out)
    out = {k: v.astype(np.float32) for k, v in sd.items()}
    out.update({f"features.{relu - 1}.num_batches_tracked": np.array(7) for relu in RELU_TO_TORCH_INDEX.values()})
    return out
