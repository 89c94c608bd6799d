"""From per-pixel occlusion probabilities to a corrupted image (ALN paper, Sec. 2 and 2.2), inside the jitted step.

Per image: the mean probability of each superpixel (segment sums), one Bernoulli decision per superpixel drawn by
the Gumbel-max trick with the straight-through estimator, the decisions broadcast back to pixels, and the occluded
pixels set to a fill value (0 in normalised space, the paper's "value 0").
"""

import jax
import jax.numpy as jnp

_EPS = 1e-6


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


def corrupt(images: jax.Array, masks: jax.Array, fill_value: float) -> jax.Array:
    """(B, H, W, C) normalised images with the (B, H, W) occluded pixels set to ``fill_value``."""
    m = masks[..., None]
    return images * (1 - m) + fill_value * m
