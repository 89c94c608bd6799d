"""A batch explained at once equals its images explained one by one; a non-finite image fails alone."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perturb_jax.explain import config as config_lib
from perturb_jax.methods.perceptual_ball import objective, perturb
from perturb_jax.runtime.vgg import VGG19BN


@pytest.fixture(scope="module")
def setup():
    model = VGG19BN(10, 16, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    options = config_lib.get_config().method.perceptual_ball
    settings = dataclasses.replace(perturb.Settings.from_options(options, "predicted"), max_steps=6,
                                   relu_layers=(2, 5), lam_perceptual=10.0)
    images = jax.random.normal(jax.random.key(3), (3, 32, 32, 3))
    return graphdef, state, settings, images


def test_batch_equals_loop(setup):
    """In float64: L-BFGS on a random network amplifies float32 rounding differences between batch shapes."""
    graphdef, state, settings, images = setup
    with jax.enable_x64(True):
        state = jax.tree.map(lambda v: v.astype(jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating) else v, state)
        images = images.astype(jnp.float64)
        fn = perturb.make_explain_fn(graphdef, settings)
        labels = jnp.zeros(3, jnp.int32)
        batch = fn(state, images, labels)
        assert np.all(np.asarray(batch["steps"]) > 0)
        for i in range(3):
            one = fn(state, images[i:i + 1], labels[i:i + 1])
            for key in ("saliency", "gradient", "loss", "margin_adv"):
                np.testing.assert_allclose(batch[key][i], one[key][0], rtol=1e-7, err_msg=key)
            assert int(batch["steps"][i]) == int(one["steps"][0])


def test_loss_decreases_and_margin_moves_towards_target(setup):
    graphdef, state, settings, images = setup
    out = perturb.make_explain_fn(graphdef, settings)(state, images, jnp.zeros(3, jnp.int32))
    start = (np.asarray(out["margin"]) - settings.target_margin) ** 2  # Eq. (4) at x' = x is the margin term alone.
    assert np.all(np.asarray(out["loss"]) < start)
    logits = nnx.merge(graphdef, state)(images)[0]
    np.testing.assert_allclose(out["margin"], objective.multiclass_margin(logits, logits.argmax(-1)), rtol=1e-5)


def test_non_finite_image_fails_alone(setup):
    graphdef, state, settings, images = setup
    bad = images.at[1, 4, 4, 0].set(jnp.nan)
    out = perturb.make_explain_fn(graphdef, settings)(state, bad, jnp.zeros(3, jnp.int32))
    assert np.asarray(out["failed"]).tolist() == [False, True, False]
    assert np.all(np.isfinite(np.asarray(out["saliency"])[[0, 2]]))


def test_convolutions_with_precomputed_input_gradient_kernels_change_no_number():
    """``grad_kernels`` (the explainer's fast path) gives the logits, taps, input gradient and weight gradient of
    plain automatic differentiation."""
    model = VGG19BN(10, 16, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

    def loss(params, x, fast):
        m = nnx.merge(graphdef, params, rest)
        logits, acts = m(x, (3, 9), grad_kernels=m.input_grad_kernels() if fast else None)
        return logits[:, 1].sum() + jnp.sum(acts[3] ** 2) + jnp.sum(acts[9])

    plain = jax.grad(loss, argnums=(0, 1))(params, x, False)
    fast = jax.grad(loss, argnums=(0, 1))(params, x, True)
    np.testing.assert_allclose(fast[1], plain[1], rtol=1e-5, atol=1e-6 * float(jnp.abs(plain[1]).max()))
    for a, b in zip(jax.tree.leaves(fast[0]), jax.tree.leaves(plain[0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()) + 1e-12)
