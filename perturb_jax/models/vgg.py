"""VGG19 with batch normalisation, laid out exactly as torchvision's ``vgg19_bn``.

torchvision's ``features`` is a ``Sequential`` of 16 (conv, BN, ReLU) triples and 5 max-pools; the ReLU of the k-th
convolution (1-based) is ``features[RELU_TO_TORCH_INDEX[k]]``. ``avgpool`` is ``AdaptiveAvgPool2d((7, 7))`` and
``classifier`` is Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear. Inputs are NHWC; ``width_divisor`` narrows every
layer (the embedded classifier uses 8).
"""

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# torchvision's configuration "E" with batch norm: numbers are conv widths, "M" a 2x2 max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
NUM_RELUS = 16


def _torch_relu_indices() -> dict[int, int]:
    """1-based ReLU number -> index of that ReLU in torchvision's ``vgg19_bn.features``."""
    out, index, relu = {}, 0, 0
    for v in VGG19_CFG:
        if v == "M":
            index += 1
        else:
            relu += 1
            out[relu] = index + 2
            index += 3
    return out


RELU_TO_TORCH_INDEX = _torch_relu_indices()


def adaptive_avg_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Row i averages input cells [floor(i*n/m), ceil((i+1)*n/m)), as torch's ``AdaptiveAvgPool2d``."""
    m = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, size_out: int) -> jax.Array:
    """torch ``AdaptiveAvgPool2d((size_out, size_out))`` on an NHWC array (identity when H = W = size_out)."""
    _, h, w, _ = x.shape
    if h == size_out and w == size_out:
        return x
    ph = jnp.asarray(adaptive_avg_pool_matrix(h, size_out), x.dtype)
    pw = jnp.asarray(adaptive_avg_pool_matrix(w, size_out), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", ph, x, pw)


def _conv_init():
    # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), bias 0.
    return jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class VGG19BN(nnx.Module):
    """torchvision ``vgg19_bn`` in NNX; ``__call__`` returns (logits, {relu number: activation})."""

    def __init__(self, num_classes: int = 1000, width_divisor: int = 1, dropout: float = 0.5, *, rngs: nnx.Rngs):
        convs, bns = [], []
        c_in = 3
        for v in VGG19_CFG:
            if v == "M":
                continue
            c_out = v // width_divisor
            convs.append(nnx.Conv(c_in, c_out, (3, 3), padding="SAME", kernel_init=_conv_init(), rngs=rngs))
            bns.append(nnx.BatchNorm(c_out, momentum=0.9, epsilon=1e-5, rngs=rngs))
            c_in = c_out
        hidden = 4096 // width_divisor
        dense = dict(kernel_init=jax.nn.initializers.normal(0.01), bias_init=jax.nn.initializers.zeros, rngs=rngs)
        self.convs = nnx.List(convs)
        self.bns = nnx.List(bns)
        self.fc = nnx.List([nnx.Linear(c_in * 49, hidden, **dense), nnx.Linear(hidden, hidden, **dense),
                            nnx.Linear(hidden, num_classes, **dense)])
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x: jax.Array, relu_layers: Iterable[int] = (), *, train: bool = False,
                 rngs: nnx.Rngs | None = None):
        """``train=True`` uses batch statistics and dropout, whose keys come from ``rngs`` (a ``dropout`` stream)."""
        wanted = frozenset(relu_layers)
        acts = {}
        k = 0
        for v in VGG19_CFG:
            if v == "M":
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = nnx.relu(self.bns[k](self.convs[k](x), use_running_average=not train))
            k += 1
            if k in wanted:
                acts[k] = x
        x = adaptive_avg_pool(x, 7)
        x = x.reshape(x.shape[0], -1)  # NHWC flattening; convert_weights permutes torch's NCHW-flattened weight.
        x = self.dropout(nnx.relu(self.fc[0](x)), deterministic=not train, rngs=rngs)
        x = self.dropout(nnx.relu(self.fc[1](x)), deterministic=not train, rngs=rngs)
        return self.fc[2](x), acts
