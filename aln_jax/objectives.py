"""The corruption network's objectives: what an occlusion mask must do to the classifier (``train.objective``).

``confusion`` is Eq. (1) of the ALN paper, ``destroy`` the deletion game of Fong & Vedaldi (2017) and
``preserve_destroy`` Dabkowski & Gal's (2017, the ALN paper's [2]). Each is a per-image value to minimise; the step
adds ``lambda_reg`` times the occluded area.
"""

import jax
import jax.numpy as jnp

OBJECTIVES = ("confusion", "destroy", "preserve_destroy")


def confusion(logits: jax.Array) -> jax.Array:
    """Eq. (1) of the ALN paper per image: the top logit minus the mean of the other K - 1 logits on the occluded
    image (0 when all are equal)."""
    top = jnp.max(logits, axis=-1)
    return top - (jnp.sum(logits, axis=-1) - top) / (logits.shape[-1] - 1)


def label_log_probability(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """log softmax(logits)[label] per image."""
    return jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]


def destroy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The true class's log-probability on the occluded image, no lower than chance's log(1/K): the deletion game of
    Fong & Vedaldi (2017). Below chance there is nothing left to hide, so a larger mask earns nothing more."""
    return jnp.maximum(label_log_probability(logits, labels), -jnp.log(logits.shape[-1]))


def needs_kept_image(objective: str) -> bool:
    """Whether ``objective`` also scores the image that keeps only the mask (one more classifier pass)."""
    return objective == "preserve_destroy"


def per_image(objective: str, occluded_logits: jax.Array, labels: jax.Array, kept_logits: jax.Array | None = None,
              preserve_weight: float = 1.0) -> jax.Array:
    """The objective of each image from the classifier's logits on the occluded image (mask hidden) and, for
    ``preserve_destroy``, on the kept image (all but the mask hidden).

    ``preserve_destroy`` (Dabkowski & Gal 2017, the ALN paper's [2]) is ``destroy`` on the image with the mask
    occluded plus ``preserve_weight`` times the cross-entropy of the true class on the image with everything BUT the
    mask occluded (the kept region alone must show the class)."""
    if objective == "confusion":
        return confusion(occluded_logits)
    if objective == "destroy":
        return destroy(occluded_logits, labels)
    if objective == "preserve_destroy":
        return destroy(occluded_logits, labels) - preserve_weight * label_log_probability(kept_logits, labels)
    raise ValueError(f"config.train.objective: {objective!r} is not one of {OBJECTIVES}")
