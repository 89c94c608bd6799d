"""Eq. (1) and Eq. (4) on hand-computed cases, and the objective's gradient against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perturb_jax.methods.perceptual_ball import objective
from perturb_jax.runtime.vgg import VGG19BN


def test_margin_hand_values():
    logits = jnp.array([[1.0, 4.0, 2.5], [3.0, -1.0, 3.0], [0.5, 0.2, -0.4]])
    # target 1: 4 - 2.5; target 0 ties with class 2: 3 - 3; target 2: -0.4 - 0.5.
    got = objective.multiclass_margin(logits, jnp.array([1, 0, 2]))
    np.testing.assert_allclose(got, [1.5, 0.0, -0.9], rtol=1e-6)


def test_perceptual_distance_mean_and_sum():
    a = {2: jnp.array([[1.0, 2.0], [3.0, 4.0]]), 5: jnp.array([0.0, 0.0, 3.0])}
    b = {2: jnp.array([[1.0, 0.0], [3.0, 5.0]]), 5: jnp.array([1.0, 0.0, 0.0])}
    # layer 2: squares 0, 4, 0, 1 -> sum 5, mean 1.25; layer 5: squares 1, 0, 9 -> sum 10, mean 10/3.
    assert float(objective.perceptual_distance(a, b, "sum")) == pytest.approx(15.0)
    assert float(objective.perceptual_distance(a, b, "mean")) == pytest.approx(1.25 + 10 / 3)


def test_loss_combines_the_three_terms():
    logits = jnp.array([2.0, 5.0, 1.0])  # margin of class 1: 5 - 2 = 3; (3 - (-2))^2 = 25.
    acts = {3: jnp.array([1.0, 1.0])}
    ref = {3: jnp.array([0.0, 2.0])}  # squares 1, 1 -> mean 1, sum 2.
    x_adv, x = jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([1.0, 2.0, 3.0, 2.0])  # squares 0,0,0,4 -> mean 1, sum 4.
    kw = dict(lam_perceptual=10.0, lam_pixel=0.5, target_margin=-2.0)
    mean = objective.perceptual_ball_loss(logits, acts, ref, x_adv, x, jnp.array(1), reduction="mean", **kw)
    total = objective.perceptual_ball_loss(logits, acts, ref, x_adv, x, jnp.array(1), reduction="sum", **kw)
    assert float(mean) == pytest.approx(25 + 10 * 1 + 0.5 * 1)
    assert float(total) == pytest.approx(25 + 10 * 2 + 0.5 * 4)


def test_gradient_matches_finite_differences():
    """Eq. (4) through a small VGG19_bn, in float64: autodiff against central differences along random directions."""
    with jax.enable_x64(True):
        model = VGG19BN(5, 16, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        state = jax.tree.map(lambda v: v.astype(jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating) else v, state)
        x = jax.random.normal(jax.random.key(1), (32, 32, 3), jnp.float64)
        layers = (2, 5, 9)
        forward = lambda z: nnx.merge(graphdef, state)(z[None], layers)  # noqa: E731
        _, ref = forward(x)
        ref = {k: v[0] for k, v in ref.items()}

        def loss(z):
            logits, acts = forward(z)
            return objective.perceptual_ball_loss(logits[0], {k: v[0] for k, v in acts.items()}, ref, z, x,
                                                  jnp.array(3), lam_perceptual=100.0, lam_pixel=1.0,
                                                  target_margin=-2.0, reduction="mean")

        loss = jax.jit(loss)
        x_adv = x + 0.1 * jax.random.normal(jax.random.key(2), x.shape, jnp.float64)
        grad = jax.jit(jax.grad(loss))(x_adv)
        assert float(jnp.abs(grad).max()) > 0
        for seed in range(3):
            v = jax.random.normal(jax.random.key(10 + seed), x.shape, jnp.float64)
            eps = 1e-5
            fd = (loss(x_adv + eps * v) - loss(x_adv - eps * v)) / (2 * eps)
            assert float(jnp.vdot(grad, v)) == pytest.approx(float(fd), rel=1e-6)
