"""Saliency maps: perturbation norm, scipy-equal Gaussian smoothing, the guided product, the gradient map."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from perturb_jax.methods.perceptual_ball import saliency


def test_perturbation_norm_hand_value():
    x = jnp.zeros((2, 2, 3))
    x_adv = x.at[0, 1].set(jnp.array([3.0, 0.0, 4.0])).at[1, 0, 2].set(-2.0)
    np.testing.assert_allclose(saliency.perturbation_norm(x_adv, x), [[0.0, 5.0], [2.0, 0.0]])


@pytest.mark.parametrize("shape,sigma", [((64, 64), 2.0), ((9, 7), 2.0), ((4, 5), 3.0), ((20, 30), 0.7)])
def test_gaussian_smooth_equals_scipy(shape, sigma):
    m = np.random.default_rng(0).random(shape).astype(np.float32)
    np.testing.assert_allclose(saliency.gaussian_smooth(jnp.asarray(m), sigma), ndimage.gaussian_filter(m, sigma),
                               atol=1e-6)


def test_gaussian_sigma_zero_is_identity():
    m = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(saliency.gaussian_smooth(m, 0.0), m)


def test_guided_multiplies_by_normalised_gradient_norm():
    pert = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    grad = jnp.zeros((2, 2, 3)).at[0, 0].set(jnp.array([0.0, 3.0, 4.0])).at[1, 1, 0].set(10.0)
    # gradient norms 5, 0, 0, 10 -> normalised 0.5, 0, 0, 1.
    np.testing.assert_allclose(saliency.guided(pert, grad), [[0.5, 0.0], [0.0, 4.0]])


def test_gradient_magnitude_is_max_abs_over_channels():
    grad = jnp.array([[[0.1, -0.7, 0.3]], [[-0.2, 0.05, 0.0]]])
    np.testing.assert_allclose(saliency.gradient_magnitude(grad), [[0.7], [0.2]])


def test_guided_normalises_each_image_of_a_batch_alone():
    pert = jnp.ones((2, 1, 2))
    grad = jnp.array([[[[1.0], [2.0]]], [[[10.0], [40.0]]]])
    np.testing.assert_allclose(saliency.guided(pert, grad), [[[0.5, 1.0]], [[0.25, 1.0]]])
