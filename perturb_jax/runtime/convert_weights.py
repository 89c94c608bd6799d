"""Converts a torchvision ``vgg19_bn`` state_dict (``.pth``, ``.npz`` or ``.safetensors``) to an Orbax checkpoint.

    python -m perturb_jax.runtime.convert_weights --torch_checkpoint=vgg19_bn-c79401a0.pth --out=DIR

Parameters are mapped by key name (``convert_state_dict``). Only ``.pth`` needs torch.
"""

import json
import os
import sys
from typing import Optional

import jax
import ml_dtypes
import numpy as np
from absl import app, flags
from flax import nnx

from perturb_jax.runtime import checkpoint
from perturb_jax.runtime.vgg import NUM_RELUS, RELU_TO_TORCH_INDEX, VGG19_CFG, VGG19BN

_TORCH_SUFFIXES = (".pth", ".pt")
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_CLASSIFIER = (0, 3, 6)  # torch ``classifier`` indices of the three Linear layers.


class ConversionError(ValueError):
    """A weight file that cannot be read or is not a (possibly narrowed) torchvision ``vgg19_bn``."""


def _as_array(value) -> np.ndarray:
    """A numpy array, floats widened or narrowed to float32."""
    a = np.asarray(value)
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) or a.dtype == ml_dtypes.bfloat16 else a


def _read_pth(path: str) -> dict:
    try:
        import torch  # noqa: PLC0415 - optional dependency, only for .pth files.
    except ImportError:
        raise ConversionError(f"{path}: reading .pth needs torch: pip install -e .[torch], "
                              "or convert the state_dict to .npz or .safetensors first") from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: not a state_dict (a dict of tensors)")
    return {k: _as_array(v.float().numpy() if v.is_floating_point() else v.numpy()) for k, v in obj.items()}


def _read_npz(path: str) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {k: _as_array(data[k]) for k in data.files}


def _read_safetensors(path: str) -> dict:
    """A minimal safetensors reader: u64 little-endian header size, JSON header, then the raw tensor bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ConversionError(f"{path}: too short for a safetensors file")
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        raise ConversionError(f"{path}: safetensors header of {n} bytes overruns the file")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    body = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ConversionError(f"{path}: key {name} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if not 0 <= start <= end <= len(body) or end - start != dtype.itemsize * int(np.prod(shape)):
            raise ConversionError(f"{path}: key {name} has data_offsets {info['data_offsets']} inconsistent with "
                                  f"shape {list(shape)}, dtype {info['dtype']} and a {len(body)}-byte body")
        out[name] = _as_array(np.frombuffer(body[start:end], dtype.newbyteorder("<")).reshape(shape))
    return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a state_dict from ``.pth``/``.pt`` (needs torch), ``.npz`` or ``.safetensors``; floats become float32."""
    suffix = os.path.splitext(path)[1].lower()
    readers = {".npz": _read_npz, ".safetensors": _read_safetensors, **{s: _read_pth for s in _TORCH_SUFFIXES}}
    if suffix not in readers:
        raise ConversionError(f"{path}: unknown format; expected one of {', '.join(sorted(readers))}")
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        return readers[suffix](path)
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to parse is reported with the path.
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConversionError(f"{path}: unreadable {suffix} file ({type(e).__name__}: {first})") from e


def _expected_shapes(num_classes: int, width_divisor: int) -> dict[str, tuple]:
    """torch key -> shape of a ``vgg19_bn`` with every width divided by ``width_divisor``."""
    shapes, c_in = {}, 3
    widths = [v // width_divisor for v in VGG19_CFG if v != "M"]
    for k, c_out in enumerate(widths):
        conv = RELU_TO_TORCH_INDEX[k + 1] - 2
        shapes[f"features.{conv}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"features.{conv}.bias"] = (c_out,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"features.{conv + 1}.{name}"] = (c_out,)
        c_in = c_out
    hidden = 4096 // width_divisor
    for i, (n_in, n_out) in zip(_CLASSIFIER, ((c_in * 49, hidden), (hidden, hidden), (hidden, num_classes))):
        shapes[f"classifier.{i}.weight"] = (n_out, n_in)
        shapes[f"classifier.{i}.bias"] = (n_out,)
    return shapes


def _infer_sizes(sd: dict, source: str) -> tuple[int, int]:
    """(num_classes, width_divisor) from the first conv and the last linear layer."""
    c0 = np.shape(sd["features.0.weight"])
    if len(c0) != 4 or c0[0] < 1 or VGG19_CFG[0] % c0[0]:
        raise ConversionError(f"{source}: features.0.weight has shape {list(c0)}; its first dimension must divide "
                              f"{VGG19_CFG[0]} (the width divided by width_divisor)")
    c6 = np.shape(sd["classifier.6.weight"])
    if len(c6) != 2:
        raise ConversionError(f"{source}: classifier.6.weight has shape {list(c6)}; expected [num_classes, features]")
    return int(c6[0]), VGG19_CFG[0] // c0[0]


def convert_state_dict(state_dict: dict[str, np.ndarray], num_classes: Optional[int] = None,
                       width_divisor: Optional[int] = None, *, source: str = "state_dict"):
    """Maps a torchvision ``vgg19_bn`` state_dict by key name to ``checkpoint.model_state``'s nested dict.

    Conv OIHW -> HWIO, BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var, linear weights
    transposed, and ``classifier.0.weight`` permuted from torch's channel-first flattening of (C, 7, 7) to the NHWC
    flattening of ``VGG19BN``. ``num_batches_tracked`` is ignored.

    Returns (pure_dict, num_classes, width_divisor); sizes not given are inferred from the shapes. ``source`` names
    the file in the one-line ``ConversionError`` for missing, unexpected or wrongly shaped keys.
    """
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    names = set(_expected_shapes(1, 1))
    missing, extra = sorted(names - set(sd)), sorted(set(sd) - names)
    if missing:
        raise ConversionError(f"{source}: missing keys: {', '.join(missing)}")
    if extra:
        raise ConversionError(f"{source}: unexpected keys: {', '.join(extra)}")
    inferred_classes, inferred_divisor = _infer_sizes(sd, source)
    num_classes = inferred_classes if num_classes is None else num_classes
    width_divisor = inferred_divisor if width_divisor is None else width_divisor
    if num_classes < 1 or width_divisor < 1:
        raise ConversionError(f"{source}: num_classes={num_classes} and width_divisor={width_divisor} must be >= 1")
    shapes = _expected_shapes(num_classes, width_divisor)
    wrong = [f"{k} expected {list(s)} got {list(np.shape(sd[k]))}" for k, s in shapes.items()
             if tuple(np.shape(sd[k])) != s]
    if wrong:
        raise ConversionError(f"{source}: wrong shapes for num_classes={num_classes}, width_divisor={width_divisor}: "
                              + "; ".join(wrong))
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    convs, bns = {}, {}
    for k in range(NUM_RELUS):
        conv = RELU_TO_TORCH_INDEX[k + 1] - 2
        convs[k] = {"kernel": sd[f"features.{conv}.weight"].transpose(2, 3, 1, 0), "bias": sd[f"features.{conv}.bias"]}
        bn = f"features.{conv + 1}."
        bns[k] = {"scale": sd[bn + "weight"], "bias": sd[bn + "bias"], "mean": sd[bn + "running_mean"],
                  "var": sd[bn + "running_var"]}
    fc = {i: {"kernel": sd[f"classifier.{t}.weight"].T, "bias": sd[f"classifier.{t}.bias"]}
          for i, t in enumerate(_CLASSIFIER)}
    w0 = sd["classifier.0.weight"]
    n_out, c = w0.shape[0], w0.shape[1] // 49
    fc[0]["kernel"] = w0.reshape(n_out, c, 7, 7).transpose(2, 3, 1, 0).reshape(49 * c, n_out)
    pure = {"convs": convs, "bns": bns, "fc": fc}
    return jax.tree.map(np.ascontiguousarray, pure), num_classes, width_divisor


def build_model(pure_dict: dict, num_classes: int, width_divisor: int) -> VGG19BN:
    """A ``VGG19BN`` holding the converted parameters and batch-norm statistics."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: VGG19BN(num_classes, width_divisor, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, pure_dict))  # no random initialisation run
    return nnx.merge(graphdef, state)


def convert_file(path: str, out: str, num_classes: Optional[int] = None, width_divisor: Optional[int] = None):
    """Reads ``path``, converts it and saves an Orbax checkpoint to ``out``; returns (num_classes, width_divisor)."""
    if os.path.exists(os.path.join(out, "model.json")) or os.path.exists(os.path.join(out, "state")):
        raise ConversionError(f"{out}: already holds a checkpoint; choose an empty --out")
    pure, num_classes, width_divisor = convert_state_dict(read_state_dict(path), num_classes, width_divisor,
                                                          source=path)
    model = build_model(pure, num_classes, width_divisor)
    checkpoint.save_model(model, out, num_classes=num_classes, width_divisor=width_divisor,
                          provenance=f"converted from {os.path.basename(path)}")
    return num_classes, width_divisor


FLAGS = flags.FLAGS


def define_flags():
    """The command line's flags; defined only when run as a program, so other CLIs may import this module."""
    flags.DEFINE_string("torch_checkpoint", None, "torchvision vgg19_bn state_dict: .pth (needs torch), .npz or "
                        ".safetensors")
    flags.DEFINE_string("out", None, "output checkpoint directory")
    flags.DEFINE_integer("num_classes", None, "number of classes; inferred from classifier.6.weight when not given")
    flags.DEFINE_integer("width_divisor", None, "width divisor; inferred from features.0.weight when not given")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.torch_checkpoint or not FLAGS.out:
        raise app.UsageError("--torch_checkpoint and --out are required")
    try:
        num_classes, width_divisor = convert_file(FLAGS.torch_checkpoint, FLAGS.out, FLAGS.num_classes,
                                                  FLAGS.width_divisor)
    except ConversionError as e:
        sys.exit(f"convert_weights: {e}")
    print(f"wrote {FLAGS.out} (vgg19_bn, num_classes={num_classes}, width_divisor={width_divisor})")


if __name__ == "__main__":
    define_flags()
    app.run(main)
