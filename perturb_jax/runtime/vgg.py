"""VGG19 with batch normalisation, laid out exactly as torchvision's ``vgg19_bn``.

torchvision's ``features`` is a ``Sequential`` of 16 (conv, BN, ReLU) triples and 5 max-pools; the ReLU of the k-th
convolution (1-based) is ``features[RELU_TO_TORCH_INDEX[k]]``. ``avgpool`` is ``AdaptiveAvgPool2d((7, 7))`` and
``classifier`` is Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear. Inputs are NHWC; ``width_divisor`` narrows every
layer (the embedded classifier uses 8).
"""

from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# torchvision's configuration "E" with batch norm: numbers are conv widths, "M" a 2x2 max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
NUM_RELUS = 16
BACKWARDS = ("plain", "guided", "excitation")


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


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_NHWC)


def input_grad_kernel(kernel: jax.Array) -> jax.Array:
    """The HWIO kernel whose 'SAME' convolution is the input gradient of ``kernel``'s: flipped in space, in and out
    channels swapped (stride 1, odd size)."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


@jax.custom_vjp
def conv_same(x: jax.Array, kernel: jax.Array, grad_kernel: jax.Array) -> jax.Array:
    """A stride-1 'SAME' convolution whose input gradient convolves with ``grad_kernel`` = ``input_grad_kernel(
    kernel)``, made once by the caller. Same values and gradients as the plain convolution; the point is XLA:CPU,
    which inside a loop body emits the transposed-kernel convolution of the automatic gradient on a slow path
    (BENCHMARKS.md, "the explainer's step") but this forward-form convolution on its fast one."""
    return _conv(x, kernel)


def _conv_same_fwd(x, kernel, grad_kernel):
    return _conv(x, kernel), (x, kernel, grad_kernel)


def _conv_same_bwd(residuals, g):
    x, kernel, grad_kernel = residuals
    kernel_grad = jax.vjp(lambda k: _conv(x, k), kernel)[1](g)[0]  # removed by XLA where no one asks for it
    return _conv(g, grad_kernel), kernel_grad, jnp.zeros_like(grad_kernel)


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def _layer_names() -> tuple[str, ...]:
    """Every module output ``VGG19BN.__call__`` can return or hook, named as in torchvision's ``vgg19_bn``."""
    names, index = [], 0
    for v in VGG19_CFG:
        width = 1 if v == "M" else 3
        names += [f"features.{index + i}" for i in range(width)]
        index += width
    return tuple(names) + ("avgpool",) + tuple(f"classifier.{j}" for j in range(7))


LAYER_NAMES = _layer_names()


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
    """ReLU whose backward pass keeps only positive gradients at positive inputs (guided backpropagation;
    Captum's ``GuidedBackprop``: relu of the ReLU's own input gradient)."""
    return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, g):
    return (jnp.where((x > 0) & (g > 0), g, 0.0),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


@jax.custom_vjp
def pass_gradient(x: jax.Array, y: jax.Array) -> jax.Array:
    """Returns ``y``; on the way back the gradient goes to ``x`` unchanged (excitation backprop's batch norm)."""
    return y


pass_gradient.defvjp(lambda x, y: (y, None), lambda _, g: (g, jnp.zeros_like(g)))


def _conv_with_bias(x, kernel, bias):
    return _conv(x, kernel) + bias


def _dense(x, kernel, bias):
    return x @ kernel + bias


def _avg_pool_7(x, kernel, bias):
    del kernel, bias
    return adaptive_avg_pool(x, 7)


def excitation_linear(f: Callable, x: jax.Array, kernel, bias) -> jax.Array:
    """``f(x, kernel, bias)`` (linear in x) whose backward pass is excitation backprop's (Zhang et al. Eq. 7, as
    TorchRay's ``ExcitationBackpropContext``): p' = x * f*(W+, p / (f(x, W+, 0) + 1e-20)), W+ = max(W, 0), f* the
    vector-Jacobian product. Weights get no gradient."""

    @jax.custom_vjp
    def apply(x, kernel, bias):
        return f(x, kernel, bias)

    def fwd(x, kernel, bias):
        return f(x, kernel, bias), (x, kernel, bias)

    def bwd(residuals, g):
        x, kernel, bias = residuals
        positive = None if kernel is None else jnp.maximum(kernel, 0)
        z, vjp = jax.vjp(lambda v: f(v, positive, None if bias is None else jnp.zeros_like(bias)), x)
        grads = (x * vjp(g / (z + 1e-20))[0],)
        return grads + tuple(None if a is None else jnp.zeros_like(a) for a in (kernel, bias))

    apply.defvjp(fwd, bwd)
    return apply(x, kernel, bias)


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

    def input_grad_kernels(self) -> list[jax.Array]:
        """``input_grad_kernel`` of every convolution, for ``__call__(..., grad_kernels=)``."""
        return [input_grad_kernel(conv.kernel.value) for conv in self.convs]

    def __call__(self, x: jax.Array, relu_layers: Iterable[int] = (), *, train: bool = False,
                 rngs: nnx.Rngs | None = None, grad_kernels: list[jax.Array] | None = None,
                 layers: Iterable[str] = (), hooks: Mapping[str, Callable[[jax.Array], jax.Array]] | None = None,
                 backward: str = "plain"):
        """``train=True`` uses batch statistics and dropout, whose keys come from ``rngs`` (a ``dropout`` stream).
        ``grad_kernels`` (``input_grad_kernels()``, made outside a loop that differentiates this call) routes every
        convolution through ``conv_same``: same numbers, XLA:CPU's fast path for the input gradient.

        The explanation methods' interface: ``layers`` names outputs to return (torchvision module names, see
        ``LAYER_NAMES``: ``features.51`` is ReLU 16); ``hooks`` maps a name to a function applied to that output
        (an additive tap to differentiate at, a change of the gradient flowing back); ``backward`` replaces the
        backward pass (``BACKWARDS``): ``guided`` (Springenberg et al.: every ReLU passes only positive gradients
        of positive inputs), ``excitation`` (Zhang et al., as TorchRay: convolutions, linear layers and average
        pools pass the excitation by their positive weights, batch norms pass it unchanged). The forward values
        never change. Returns (logits, {relu number or layer name: output}).
        """
        if backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
        wanted, names, hooks = frozenset(relu_layers), frozenset(layers), dict(hooks or {})
        acts = {}
        relu = guided_relu if backward == "guided" else nnx.relu
        ebp = backward == "excitation"

        def tap(name, value):
            value = hooks[name](value) if name in hooks else value
            if name in names:
                acts[name] = value
            return value

        k = index = 0
        for v in VGG19_CFG:
            if v == "M":
                x = tap(f"features.{index}", nnx.max_pool(x, (2, 2), strides=(2, 2)))
                index += 1
                continue
            conv, bn = self.convs[k], self.bns[k]
            if ebp:
                h = excitation_linear(_conv_with_bias, x, conv.kernel.value, conv.bias.value)
            elif grad_kernels is None:
                h = conv(x)
            else:
                h = conv_same(x, conv.kernel.value, grad_kernels[k]) + conv.bias.value
            h = tap(f"features.{index}", h)
            normed = bn(h, use_running_average=not train)
            h = tap(f"features.{index + 1}", pass_gradient(h, normed) if ebp else normed)
            x = tap(f"features.{index + 2}", relu(h))
            k += 1
            index += 3
            if k in wanted:
                acts[k] = x
        x = tap("avgpool", excitation_linear(_avg_pool_7, x, None, None) if ebp else adaptive_avg_pool(x, 7))
        x = x.reshape(x.shape[0], -1)  # NHWC flattening; convert_weights permutes torch's NCHW-flattened weight.
        for j, fc in enumerate(self.fc):
            x = tap(f"classifier.{3 * j}",
                    excitation_linear(_dense, x, fc.kernel.value, fc.bias.value) if ebp else fc(x))
            if j < 2:
                x = tap(f"classifier.{3 * j + 1}", relu(x))
                x = tap(f"classifier.{3 * j + 2}", self.dropout(x, deterministic=not train, rngs=rngs))
        return x, acts


class FoldedVGG(nnx.Module):
    """A trained ``VGG19BN`` in inference form with each batch norm folded into its convolution: the same logits
    as ``vgg(x)`` (eval mode), every weight an ``nnx.Param`` that a training step can fine-tune (the ALN's
    ``aln.classifier`` option).

    BN(conv(x)) = conv(x) * g + (b - mu) * g + beta with g = gamma / sqrt(var + eps), per output channel.
    """

    def __init__(self, vgg: VGG19BN):
        self.convs = nnx.List()
        for conv, bn in zip(vgg.convs, vgg.bns):
            g = bn.scale.value / jnp.sqrt(bn.var.value + bn.epsilon)
            folded = nnx.Conv(conv.in_features, conv.out_features, (3, 3), padding="SAME", rngs=nnx.Rngs(0))
            folded.kernel.value = conv.kernel.value * g
            folded.bias.value = (conv.bias.value - bn.mean.value) * g + bn.bias.value
            self.convs.append(folded)
        self.fc = nnx.List([nnx.Linear(f.in_features, f.out_features, rngs=nnx.Rngs(0)) for f in vgg.fc])
        for mine, theirs in zip(self.fc, vgg.fc):
            mine.kernel.value, mine.bias.value = theirs.kernel.value, theirs.bias.value

    def __call__(self, x: jax.Array) -> jax.Array:
        k = 0
        for v in VGG19_CFG:
            if v == "M":
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            else:
                x = nnx.relu(self.convs[k](x))
                k += 1
        x = adaptive_avg_pool(x, 7).reshape(x.shape[0], -1)
        x = nnx.relu(self.fc[0](x))
        return self.fc[2](nnx.relu(self.fc[1](x)))


def folded(vgg: VGG19BN) -> FoldedVGG:
    """``FoldedVGG(vgg)`` built in one compiled call (0.5 s; op by op each layer's initialiser compiles: 12 s)."""
    return nnx.jit(FoldedVGG)(vgg)
