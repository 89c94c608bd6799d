"""RISE: TorchRay parity with the very same masks (TorchRay's generator, fed to both), our mask generator against
TorchRay's upsampling, and properties on stand-in models whose answer is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perturb_jax.methods import rise
from tests.torch_fixtures import paired_models


def _options(**kw):
    return {k: o.default for k, o in rise.OPTIONS.items()} | {"chunk_size": 64} | kw


class StandIn:
    """A "model" of two classes: class 0's logit is ``gain`` x (mean of the input over a square) + ``bias``."""

    def __init__(self, square, gain, bias):
        self.square, self.gain, self.bias = square, gain, bias

    def __call__(self, x):
        (y0, y1), (x0, x1) = self.square
        logit = self.gain * x[:, y0:y1, x0:x1, :].mean(axis=(1, 2, 3)) + self.bias
        return jnp.stack([logit, jnp.zeros_like(logit)], axis=1), {}


def test_constant_score_gives_the_mean_mask():
    """sigmoid(50) = 1 for every mask: the map is sum_i M_i / N (TorchRay divides by N, not N p), ~p = 0.5."""
    images = jnp.ones((1, 32, 32, 3))
    out = rise.explain(StandIn(((0, 1), (0, 1)), 0.0, 50.0), images, jnp.zeros(1, jnp.int32), jax.random.key(0),
                       _options(num_masks=1000))["saliency"]
    assert out.shape == (1, 32, 32)
    assert abs(float(out.mean()) - 0.5) < 0.01
    assert float(out.min()) > 0.4 and float(out.max()) < 0.6


def test_map_peaks_on_the_square_the_score_reads():
    square = ((8, 16), (20, 28))
    images = jnp.ones((2, 32, 32, 3))
    model = StandIn(square, 8.0, -4.0)
    out = rise.explain(model, images, jnp.zeros(2, jnp.int32), jax.random.key(1),
                       _options(num_masks=500))["saliency"]
    inside = np.zeros((32, 32), bool)
    inside[8:16, 20:28] = True
    for m in np.asarray(out):
        y, x = np.unravel_index(m.argmax(), m.shape)
        assert inside[y, x]
        assert m[inside].mean() > m[~inside].mean() + 0.05
    # one key per mask: the map does not depend on how many masks a pass evaluates
    small = rise.explain(model, images, jnp.zeros(2, jnp.int32), jax.random.key(1),
                         _options(num_masks=500, chunk_size=6))["saliency"]
    np.testing.assert_allclose(small, out, atol=1e-6)
    # ``masks(key)`` are the masks ``explain`` draws for ``key`` (what a reference is given)
    drawn = rise.masks(jax.random.key(1), (32, 32), 500, 7, 0.5)
    given = rise.saliency_from_masks(rise.model_score(model, "sigmoid"), images, jnp.zeros(2, jnp.int32), drawn, 64)
    np.testing.assert_allclose(given, out, atol=1e-6)


def test_random_masks_are_smooth_grids_with_probability_p():
    keys = jax.random.key_data(jax.random.split(jax.random.key(2), 4000))
    masks = np.asarray(rise.random_masks(keys, 7, 0.3, (40, 40)))
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - 0.3) < 0.01
    # bilinear: neighbours differ by at most 1 / (pixels per upsampled cell) = 1/7 (cell of 6 + 1 shift)
    assert np.abs(np.diff(masks, axis=1)).max() <= 1 / 7 + 1e-6
    assert len({m.tobytes() for m in masks[:50]}) == 50


def test_our_masks_from_torchray_grids_and_shifts_are_torchrays():
    pytest.importorskip("torchray")
    from benchmarks.references import torchray_rise

    for size in ((64, 64), (50, 37)):
        masks, grids, shifts = torchray_rise.masks(70, 7, 0.5, size, seed=4)
        ours = rise.masks_from_grids(jnp.asarray(grids), jnp.asarray(shifts), size)
        np.testing.assert_allclose(ours, masks, atol=1e-6)


def _parity(num_classes, width_divisor, size, batch, num_masks):
    pytest.importorskip("torch")
    pytest.importorskip("torchray")
    from benchmarks.references import torchray_rise

    torch_model, jax_model = paired_models(num_classes, width_divisor)
    rng = np.random.default_rng(5)
    images = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
    targets = rng.integers(0, num_classes, batch)
    masks = torchray_rise.masks(num_masks, 7, 0.5, (size, size), seed=6)[0]
    ref = torchray_rise.saliency(torch_model, images, targets, masks)
    # TorchRay's own masks from the seed are the ones the reference generator gives (checked once)
    if width_divisor > 1:
        own = torchray_rise.saliency(torch_model, images[:1], targets[:1], num_masks=num_masks, seed=6)
        np.testing.assert_array_equal(own, ref[:1])
    graphdef, state = nnx.split(jax_model)  # the weights an argument: no constant folding of them

    @jax.jit
    def fn(state, x, t, m):
        return rise.saliency_from_masks(rise.model_score(nnx.merge(graphdef, state), "sigmoid"), x, t, m, 96)

    ours = np.asarray(fn(state, jnp.asarray(images.transpose(0, 2, 3, 1)), jnp.asarray(targets), jnp.asarray(masks)))
    assert ours.shape == (batch, size, size)
    assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-4


def test_parity_with_torchray_narrow():
    _parity(10, 8, 64, 3, 128)


def test_parity_with_torchray_full_width():
    _parity(5, 1, 32, 1, 32)
