"""The two networks of the Adversarial Localization Network (Fan, Zhao, Ermon), in Flax NNX. Inputs are NHWC.

``CorruptionNet`` (Sec. 2.1): an encoder, a fully connected bottleneck and a transposed-convolution decoder with
the paper's "residual connections"; one occlusion logit per pixel. ``Classifier`` (Sec. 3.3): the paper's simple
4-layer convolutional network. The paper gives no layer sizes: the defaults in ``aln_jax/config.py`` are ours.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from perturb_jax.runtime.vgg import VGG19_CFG, FoldedVGG


class Deconv2x(nnx.Module):
    """A transposed convolution with a 2x2 kernel and stride 2: each input pixel becomes a 2x2 block of outputs.

    Written as one matrix product and a depth-to-space reshape: torch's ``ConvTranspose2d(kernel_size=2,
    stride=2)``, and ``nnx.ConvTranspose`` with kernel (2, 2), stride 2, 'VALID' padding and the kernel flipped
    (tested). XLA:CPU runs the gradient of the ``lax.conv_transpose`` form 12x slower (32x32x32, batch 64).
    """

    def __init__(self, c_in: int, c_out: int, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2, 3))
        self.kernel = nnx.Param(init(rngs.params(), (c_in, 2, 2, c_out)))
        self.bias = nnx.Param(jnp.zeros((c_out,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        y = jnp.einsum("bhwc,cijo->bhiwjo", x, self.kernel.value)
        return y.reshape(b, 2 * h, 2 * w, -1) + self.bias.value


class ConvEncoder(nnx.Module):
    """The corruption network's encoder trained from scratch: a full-resolution 3x3 convolution to w1 channels, then
    one stride-2 3x3 convolution per width; returns the features at H, H/2, ..., H/2^d (ReLU'd)."""

    def __init__(self, widths: Sequence[int], *, rngs: nnx.Rngs):
        self.channels = (widths[0], *widths)  # per resolution: H, H/2, ..., H/2^d
        self.stem = nnx.Conv(3, widths[0], (3, 3), padding="SAME", rngs=rngs)
        self.down = nnx.List([nnx.Conv(self.channels[k], self.channels[k + 1], (3, 3), strides=(2, 2),
                                       padding="SAME", rngs=rngs) for k in range(len(widths))])

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        skips = [nnx.relu(self.stem(x))]
        for conv in self.down:
            skips.append(nnx.relu(conv(skips[-1])))
        return skips


class VGGEncoder(nnx.Module):
    """The encoder initialised from a trained VGG19_bn's features (batch norms folded, ``FoldedVGG``): its first
    ``depth + 1`` blocks, returning each block's output before its max-pool, at H, H/2, ..., H/2^depth."""

    def __init__(self, vgg: FoldedVGG, depth: int):
        sizes, count = [], 0
        for v in VGG19_CFG:
            sizes, count = (sizes + [count], 0) if v == "M" else (sizes, count + 1)
        sizes = sizes[:depth + 1]
        self.block_sizes = tuple(sizes)
        self.convs = nnx.List(list(vgg.convs)[:sum(sizes)])
        self.channels = tuple(self.convs[sum(sizes[:k + 1]) - 1].out_features for k in range(depth + 1))

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        skips, k = [], 0
        for i, size in enumerate(self.block_sizes):
            if i:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            for _ in range(size):
                x = nnx.relu(self.convs[k](x))
                k += 1
            skips.append(x)
        return skips


class CorruptionNet(nnx.Module):
    """``__call__(x, labels=None) -> (B, H, W)`` occlusion logits; their ``sigmoid`` is the per-pixel probability of
    Sec. 2.

    Sec. 2.1: a strided convolutional encoder (trained from scratch, or a trained VGG19_bn's features), a fully
    connected bottleneck (global information, optionally class-conditional), and a transposed-convolution
    ("deconvolution") decoder that adds the encoder's features at each matching resolution (the paper's "residual
    connections", which carry the edges the bottleneck loses). Our defaults in ``aln_jax/config.py`` are sized for a
    64x64 input.

    The encoder (``ConvEncoder`` of ``widths``, or ``VGGEncoder`` of ``vgg`` with ``len(widths)`` halvings) gives
    features at H, H/2, ..., H/2^d; the bottleneck maps the flattened deepest features through ``bottleneck`` units
    and back; each decoder stage doubles the resolution and adds the encoder's features there. With
    ``num_classes`` > 0 the network is class-conditional (Dabkowski & Gal's class selector): an embedding of the
    class is added to the bottleneck's units, and ``labels`` must be given. With ``freeze_encoder`` the encoder's
    features are constants of training (no gradient reaches its weights).
    """

    def __init__(self, image_size: int, widths: Sequence[int], bottleneck: int, *, num_classes: int = 0,
                 vgg: FoldedVGG | None = None, freeze_encoder: bool = False, rngs: nnx.Rngs):
        depth = len(widths)
        self.freeze_encoder = freeze_encoder
        self.encoder = ConvEncoder(widths, rngs=rngs) if vgg is None else VGGEncoder(vgg, depth)
        channels = self.encoder.channels
        self.side = image_size // 2 ** depth
        flat = self.side * self.side * channels[-1]
        self.fc_in = nnx.Linear(flat, bottleneck, rngs=rngs)
        self.embed = nnx.Embed(num_classes, bottleneck, rngs=rngs) if num_classes else None
        self.fc_out = nnx.Linear(bottleneck, flat, rngs=rngs)
        self.up = nnx.List([Deconv2x(channels[k + 1], channels[k], rngs=rngs) for k in reversed(range(depth))])
        self.head = nnx.Conv(channels[0], 1, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        skips = self.encoder(x)
        if self.freeze_encoder:  # no gradient reaches the encoder: its weights stay (Adam's update of 0 is 0)
            skips = jax.lax.stop_gradient(skips)
        h = skips[-1]
        g = self.fc_in(h.reshape(h.shape[0], -1))
        if self.embed is not None:
            if labels is None:
                raise ValueError("a class-conditional corruption network needs the labels (aln.class_conditional)")
            g = g + self.embed(labels)
        h = nnx.relu(self.fc_out(nnx.relu(g))).reshape(h.shape) + h
        for conv, skip in zip(self.up, reversed(skips[:-1])):
            h = nnx.relu(conv(h) + skip)
        return self.head(h)[..., 0]


class Classifier(nnx.Module):
    """The paper's simple 4-layer convolutional network (Sec. 3.3): four (3x3 convolution, ReLU, 2x2 max-pool) layers
    and a linear layer on their flattened (pooled) features.

    Flattened rather than globally pooled: on the embedded benchmark the pooled variant stayed at chance for 1200
    Adam steps where this one reached 22% (batch 64, learning rate 2e-3, measured on the training images).
    """

    def __init__(self, num_classes: int, widths: Sequence[int], image_size: int, *, rngs: nnx.Rngs):
        ins = (3, *widths[:-1])
        self.convs = nnx.List([nnx.Conv(i, o, (3, 3), padding="SAME", rngs=rngs) for i, o in zip(ins, widths)])
        side = image_size // 2 ** len(widths)
        self.out = nnx.Linear(side * side * widths[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.convs:
            x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), strides=(2, 2))
        return self.out(x.reshape(x.shape[0], -1))
