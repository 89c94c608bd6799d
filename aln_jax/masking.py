"""From per-pixel occlusion probabilities to a corrupted image (ALN paper, Sec. 2 and 2.2), inside the jitted step.

Per image: the mean probability of each superpixel (segment sums), one Bernoulli decision per superpixel drawn by
the Gumbel-max trick with the straight-through estimator, the decisions broadcast back to pixels, and the occluded
pixels replaced by a fill (``aln.fill``): a constant (the paper's "value 0" in normalised space), the image blurred,
noise, or one of these three drawn per image, so that the occluder's outline is not itself a shape to read.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-6
FILLS = ("constant", "blur", "noise", "random")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def bounded_logits(logits: jax.Array, bound: float) -> jax.Array:
    """``clip(logits, -bound, bound)`` whose gradient passes wherever it would move a logit back inside the bound
    and is 0 where it would push one further out (ours: the sigmoid of a clipped logit keeps a gradient of at least
    sigmoid'(bound), so occlusion probabilities cannot saturate at 0 or 1 and stop learning, which ended the
    default variant's runs without it; the logits cannot drift beyond the bound either)."""
    return jnp.clip(logits, -bound, bound)


def _bounded_fwd(logits, bound):
    return bounded_logits(logits, bound), logits


def _bounded_bwd(bound, logits, g):
    outward = ((logits > bound) & (g < 0)) | ((logits < -bound) & (g > 0))  # descent moves by -g
    return (jnp.where(outward, 0.0, g),)


bounded_logits.defvjp(_bounded_fwd, _bounded_bwd)


def occlusion_probability(logits: jax.Array, bound: float) -> jax.Array:
    """The per-pixel occlusion probability of Sec. 2: sigmoid of the logits, bounded (``bounded_logits``) when
    ``bound`` > 0 (0: the paper's plain sigmoid)."""
    return jax.nn.sigmoid(bounded_logits(logits, bound) if bound > 0 else logits)


def segment_means(values: jax.Array, segments: jax.Array, num_segments: int) -> jax.Array:
    """(H, W) values and integer segment ids -> (num_segments,) mean value of each segment (0 for an empty one)."""
    ids = segments.reshape(-1)
    sums = jax.ops.segment_sum(values.reshape(-1), ids, num_segments)
    counts = jax.ops.segment_sum(jnp.ones_like(ids, values.dtype), ids, num_segments)
    return sums / jnp.maximum(counts, 1)


def gumbel_bernoulli(p: jax.Array, key: jax.Array) -> jax.Array:
    """A 0/1 sample of Bernoulli(p) per entry, with the straight-through gradient d(sample)/dp = 1 (Sec. 2.2).

    The paper writes z = -ln(-ln(-u)) and compares p + z1 with 1 - p + z2: typos. The Gumbel-max trick it cites
    draws z = -ln(-ln(u)) and compares the log-probabilities, log p + z1 > log(1 - p) + z2, which holds with
    probability exactly p. The straight-through estimator (Bengio et al. 2013) passes the gradient as if the
    sample were p.
    """
    p_safe = jnp.clip(p, _EPS, 1 - _EPS)
    u = jax.random.uniform(key, (2, *p.shape), p.dtype, minval=jnp.finfo(p.dtype).tiny, maxval=1.0)
    z = -jnp.log(-jnp.log(u))
    hard = (jnp.log(p_safe) + z[0] > jnp.log1p(-p_safe) + z[1]).astype(p.dtype)
    return p + jax.lax.stop_gradient(hard - p)


def superpixel_mask(probs: jax.Array, segments: jax.Array, key: jax.Array, num_segments: int) -> jax.Array:
    """One image: (H, W) probabilities and segment ids -> (H, W) 0/1 occlusion mask, one decision per superpixel."""
    decisions = gumbel_bernoulli(segment_means(probs, segments, num_segments), key)
    return decisions[segments]


def corrupt(images: jax.Array, masks: jax.Array, fill: float | jax.Array) -> jax.Array:
    """(B, H, W, C) normalised images with the (B, H, W) occluded pixels replaced by ``fill`` (a value, or images
    of the same shape made by ``fill``)."""
    m = masks[..., None]
    return images * (1 - m) + fill * m


def blur_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) Gaussian smoothing along one axis, each row renormalised to sum 1 where it leaves the image."""
    d = np.arange(size)[:, None] - np.arange(size)[None, :]
    weights = np.exp(-0.5 * (d / sigma) ** 2) * (np.abs(d) <= np.ceil(3 * sigma))
    return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def blur(image: jax.Array, sigma: float) -> jax.Array:
    """One (H, W, C) image smoothed by a separable Gaussian of ``sigma`` pixels (``blur_matrix`` on each axis)."""
    rows, cols = blur_matrix(image.shape[0], sigma), blur_matrix(image.shape[1], sigma)
    return jnp.einsum("ij,jkc,lk->ilc", rows, image, cols)


def fill(image: jax.Array, kind: str, value: float, sigma: float, key: jax.Array) -> jax.Array:
    """What the occluded pixels of one (H, W, C) normalised image become: ``value`` ('constant'), the image blurred
    ('blur'), standard normal noise in normalised space ('noise'), or one of these three drawn at random."""
    if kind == "constant":
        return jnp.full_like(image, value)
    if kind == "blur":
        return blur(image, sigma)
    k_noise, k_pick = jax.random.split(key)
    noise = jax.random.normal(k_noise, image.shape, image.dtype)
    if kind == "noise":
        return noise
    if kind == "random":
        pick = jax.random.randint(k_pick, (), 0, 3)
        return jnp.where(pick == 0, value, jnp.where(pick == 1, blur(image, sigma), noise))
    raise ValueError(f"config.aln.fill: {kind!r} is not one of {FILLS}")
