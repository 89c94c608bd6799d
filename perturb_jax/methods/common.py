"""What the explanation methods share: their options, gradients at the input or a named layer, chunked sampling,
the reduction of an (H, W, C) attribution to a map, and resizing a low-resolution map to the image."""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from perturb_jax.runtime.vgg import VGG19BN


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a method: its default (whose type is the accepted type; a tuple's entries are of its first
    entry's type), where the default comes from, and the accepted values (``choices``, a ``minimum`` and a
    ``maximum``, or ``layer=True`` for a name in ``vgg.LAYER_NAMES``)."""

    default: Any
    source: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    layer: bool = False


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method: ``explain(model, images, targets, key, options) -> {"saliency": (B, H, W), ...}``.

    ``images`` are normalised NHWC, ``targets`` (B,) class indices, ``key`` a PRNG key (methods that sample use it),
    ``options`` a dict of the method's ``options`` plus ``chunk_size`` (network evaluations per pass). Other keys
    of the result are per-image diagnostics, stored beside the map. ``citation`` names the paper and reference
    library it follows. ``label(options)``, when given, names the variant in tables (else ``name``);
    ``summarise(diagnostics)``, when given, turns one split's per-image diagnostics ({key: (N,) array}) into
    summary figures."""

    name: str
    explain: Callable
    options: dict[str, Option]
    citation: str
    label: Callable[[dict], str] | None = None
    summarise: Callable[[dict], dict] | None = None


def target_logits(model: VGG19BN, images: jax.Array, targets: jax.Array, grad_kernels: list | None = None,
                  **kwargs) -> jax.Array:
    """C_t(x) per image, (B,); ``grad_kernels``, when given, as ``VGG19BN.__call__``'s."""
    if grad_kernels is not None:
        kwargs["grad_kernels"] = grad_kernels
    logits = model(images, **kwargs)[0]
    return jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]


def input_gradient(model: VGG19BN, images: jax.Array, targets: jax.Array, backward: str = "plain",
                   grad_kernels: list | None = None) -> jax.Array:
    """dC_t/dx per image (images are independent in eval mode, so the gradient of the sum is each image's).
    Inside a loop body pass ``grad_kernels=model.input_grad_kernels()`` made outside it: XLA:CPU's fast path for
    the convolutions' input gradient (``vgg.conv_same``)."""
    return jax.grad(lambda x: target_logits(model, x, targets, grad_kernels, backward=backward).sum())(images)


def layer_gradient(model: VGG19BN, images: jax.Array, targets: jax.Array, layer: str, backward: str = "plain",
                   hooks: dict | None = None) -> tuple[jax.Array, jax.Array]:
    """(the output A of ``layer``, dC_t/dA) per image, through ``backward`` and any further ``hooks``."""
    shape = jax.eval_shape(lambda x: model(x, layers=[layer])[1][layer], images)
    hooks = dict(hooks or {})

    def target_sum(tap):
        tapped = hooks | {layer: lambda a: a + tap}
        logits, acts = model(images, layers=[layer], hooks=tapped, backward=backward)
        return jnp.take_along_axis(logits, targets[:, None], axis=1).sum(), acts[layer]

    grad, acts = jax.grad(target_sum, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    return acts, grad


def max_abs_over_channels(attribution: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H, W): max |.| over channels (TorchRay's reduction of a gradient)."""
    return jnp.abs(attribution).max(axis=-1)


def samples_per_pass(chunk_size: int, batch: int, total: int) -> int:
    """How many of ``total`` samples per image one pass evaluates: at most ``chunk_size`` network evaluations over
    the batch, in as few passes as that allows, spread evenly over them so that the last pass pads least (50
    Integrated Gradients steps of 8 images at chunk 256: 2 passes of 25, not 32 and 18 padded to 32, which cost
    1.3x the time)."""
    most = int(max(1, min(total, chunk_size // max(batch, 1))))
    passes = -(-total // most)
    return -(-total // passes)


def chunked_sum(fn: Callable[[jax.Array], jax.Array], xs: jax.Array, per_pass: int) -> jax.Array:
    """sum_i fn(xs[i:i+per_pass]) over the leading axis of ``xs``, ``per_pass`` at a time (``lax.map``), so that
    memory holds one chunk; a last partial chunk is padded with copies of the first entry, whose share is removed
    by ``fn``'s caller giving zero weight (``fn`` receives ``(chunk, weight)``)."""
    n = xs.shape[0]
    chunks = -(-n // per_pass)
    pad = chunks * per_pass - n
    weight = jnp.concatenate([jnp.ones(n, jnp.float32), jnp.zeros(pad, jnp.float32)])
    xs = jnp.concatenate([xs, jnp.repeat(xs[:1], pad, axis=0)]) if pad else xs
    xs = xs.reshape(chunks, per_pass, *xs.shape[1:])
    weight = weight.reshape(chunks, per_pass)
    if chunks == 1:
        return fn(xs[0], weight[0])
    return jax.lax.map(lambda c: fn(*c), (xs, weight)).sum(axis=0)


def _nearest_index(size_in: int, size_out: int) -> np.ndarray:
    """torch ``F.interpolate(mode='nearest')``: output i reads input floor(i * size_in / size_out)."""
    return np.minimum((np.arange(size_out) * size_in) // size_out, size_in - 1)


def upsample(maps: jax.Array, size: tuple[int, int], mode: str) -> jax.Array:
    """(B, h, w) -> (B, H, W) as torch ``F.interpolate``: ``nearest`` or ``bilinear`` (align_corners=False)."""
    b, h, w = maps.shape
    if (h, w) == tuple(size):
        return maps
    if mode == "nearest":
        return maps[:, _nearest_index(h, size[0])][:, :, _nearest_index(w, size[1])]
    return jax.image.resize(maps, (b, *size), method="linear", antialias=False)


UPSAMPLE_MODES = ("bilinear", "nearest")
