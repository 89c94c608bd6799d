"""DeepFool: the step computed by hand on linear classifiers, the candidate classes, per-image freezing in a batch,
and parity with torchattacks 3.5.1 on the torch replica (near a decision boundary, so that it is fooled in a few
steps: a random network is nearly constant, and far from a boundary both runs clamp for 50 steps)."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perturb_jax.methods import deepfool
from tests.torch_fixtures import paired_models

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _linear(weights, bias):
    w, b = jnp.asarray(weights), jnp.asarray(bias)
    return lambda p: p.reshape(p.shape[0], -1) @ w + b


def test_linear_classifier_is_fooled_in_one_step_of_the_nearest_boundary_with_overshoot():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(4 * 4 * 3, 6)).astype(np.float32) * 0.5
    bias = rng.normal(size=6).astype(np.float32)
    pixels = jnp.asarray(rng.uniform(0.4, 0.6, size=(3, 4, 4, 3)).astype(np.float32))
    logits = np.asarray(_linear(weights, bias)(pixels))
    targets = logits.argmax(1)
    adv, steps, fooled = deepfool.attack(_linear(weights, bias), pixels, jnp.asarray(targets), 50, 0.02, 10, 64)
    np.testing.assert_array_equal(steps, [1, 1, 1])
    assert bool(fooled.all())
    assert 0 < float(adv.min()) and float(adv.max()) < 1  # no clamping here: the step is the linear one
    r = np.asarray(adv - pixels).reshape(3, -1)
    for i, t in enumerate(targets):
        others = [k for k in range(6) if k != t]
        dist = [abs(logits[i, k] - logits[i, t]) / np.linalg.norm(weights[:, k] - weights[:, t]) for k in others]
        nearest = others[int(np.argmin(dist))]
        # the step is 1.02 x the distance to the nearest boundary, along w_l - w_t
        np.testing.assert_allclose(np.linalg.norm(r[i]), 1.02 * min(dist), rtol=1e-5)
        direction = weights[:, nearest] - weights[:, t]
        np.testing.assert_allclose(r[i] @ direction, np.linalg.norm(r[i]) * np.linalg.norm(direction), rtol=1e-5)
        assert np.asarray(_linear(weights, bias)(adv))[i].argmax() == nearest


def test_candidates_are_the_target_and_the_top_classes_of_the_clean_image():
    """Class 3 scores lowest but its boundary is nearest (its weights differ most): all classes find it, the
    target and the 2 other top classes do not."""
    weights = np.array([[1.0, 0.0, 0.0, 0.0],
                        [0.0, 1.0, 0.0, -40.0],
                        [0.0, 0.0, 0.0, 40.0]], np.float32)
    bias = np.array([1.0, 0.5, 0.0, -2.0], np.float32)
    pixels = jnp.full((1, 1, 1, 3), 0.5)
    # f = (1.5, 1.0, 0.0, -2.0); distances from class 0: 0.5 / sqrt(2) = 0.35 to class 1, 1.5 to class 2,
    # 3.5 / ||(-1, -40, 40)|| = 0.062 to class 3
    for candidates, nearest in ((4, 3), (3, 1)):
        adv, _, fooled = deepfool.attack(_linear(weights, bias), pixels, jnp.asarray([0]), 50, 0.02, candidates, 8)
        out = np.asarray(_linear(weights, bias)(adv))[0]
        assert bool(fooled[0]) and out.argmax() == nearest


class LinearStandIn:
    """A "model" linear in the normalised image, with ``VGG19BN``'s call signature."""

    def __init__(self, weights):
        self.weights = jnp.asarray(weights)

    def input_grad_kernels(self):
        return []

    def __call__(self, x, grad_kernels=None):
        return x.reshape(x.shape[0], -1) @ self.weights, {}


def test_explain_attacks_in_pixel_space():
    """x = (pixels - mean) / std: the logits are linear in the pixels with weights w / std; the map is the L2 norm
    over channels of 1.02 x the pixel-space step to the nearest boundary."""
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(2 * 2 * 3, 3)).astype(np.float32)
    mean, std = np.float32([0.4, 0.5, 0.6]), np.float32([0.2, 0.3, 0.1])
    pixels = rng.uniform(0.45, 0.55, size=(1, 2, 2, 3)).astype(np.float32)
    images = (pixels - mean) / std
    logits = images.reshape(1, -1) @ weights
    t = int(logits.argmax())
    pixel_weights = weights / np.tile(std, 4)[:, None]
    dist = {k: abs(logits[0, k] - logits[0, t]) / np.linalg.norm(pixel_weights[:, k] - pixel_weights[:, t])
            for k in range(3) if k != t}
    k = min(dist, key=dist.get)
    w = pixel_weights[:, k] - pixel_weights[:, t]
    expected = 1.02 * dist[k] * w / np.linalg.norm(w)
    out = deepfool.explain(LinearStandIn(weights), jnp.asarray(images), jnp.asarray([t]), None,
                           {name: o.default for name, o in deepfool.OPTIONS.items()}
                           | {"mean": tuple(mean.tolist()), "std": tuple(std.tolist()), "chunk_size": 8})
    np.testing.assert_allclose(out["saliency"][0], np.linalg.norm(expected.reshape(2, 2, 3), axis=-1), rtol=1e-4)
    assert int(out["steps"][0]) == 1 and bool(out["fooled"][0])


def test_batch_images_are_attacked_independently_and_frozen_when_done():
    rng = np.random.default_rng(1)
    weights = jnp.asarray(rng.normal(size=(5 * 5 * 3, 4)).astype(np.float32))

    def logits_fn(p):
        return jnp.tanh(8 * (p - 0.5)).reshape(p.shape[0], -1) @ weights

    pixels = jnp.asarray(rng.uniform(0.2, 0.8, size=(4, 5, 5, 3)).astype(np.float32))
    targets = np.asarray(logits_fn(pixels)).argmax(1)
    targets[3] = (targets[3] + 1) % 4  # not the prediction: left unchanged, no step
    adv, steps, fooled = deepfool.attack(logits_fn, pixels, jnp.asarray(targets), 50, 0.02, 10, 64)
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert int(steps[3]) == 0 and bool(fooled[3])
    np.testing.assert_array_equal(adv[3], pixels[3])
    assert int(steps.max()) > 1  # the non-linearity makes some image take more than one step
    for i in range(4):
        one = deepfool.attack(logits_fn, pixels[i:i + 1], jnp.asarray(targets[i:i + 1]), 50, 0.02, 10, 64)
        np.testing.assert_allclose(one[0][0], adv[i], atol=1e-6)
        assert int(one[1][0]) == int(steps[i]) and bool(one[2][0]) == bool(fooled[i])
    # passes of 1 and of 3 images (3 VJPs each), the rest one at a time: the running images regrouped every step
    for chunk_size in (3, 9):
        grouped = deepfool.attack(logits_fn, pixels, jnp.asarray(targets), 50, 0.02, 10, chunk_size)
        np.testing.assert_allclose(grouped[0], adv, atol=1e-6)
        np.testing.assert_array_equal(grouped[1], steps)
    capped = deepfool.attack(logits_fn, pixels, jnp.asarray(targets), 1, 0.02, 10, 64)
    np.testing.assert_array_equal(capped[1], np.minimum(np.asarray(steps), 1))


def _near_tie(torch_model, jax_model, images_nchw, margin):
    """Moves the final bias of both models so that, on average over the images, the top class leads the second by
    ``margin`` (new tensors: the JAX weights may share memory with torch's). Returns the predictions."""
    import torch

    with torch.no_grad():
        mean_logits = torch_model(torch.as_tensor(images_nchw)).numpy().mean(0)
        first, second = np.argsort(mean_logits)[::-1][:2]
        bias = torch_model.classifier[-1].bias.detach().numpy().copy()
        bias[first] += mean_logits[second] - mean_logits[first] + margin
        torch_model.classifier[-1].bias = torch.nn.Parameter(torch.tensor(bias))
        jax_model.fc[2].bias[...] = jnp.asarray(bias)
        return torch_model(torch.as_tensor(images_nchw)).numpy().argmax(1)


def _parity(num_classes, width_divisor, size, batch, margin, tolerance, float64=False):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchattacks")
    from benchmarks.references import torchattacks_deepfool
    from tests.torch_fixtures import run_method

    torch_model, jax_model = paired_models(num_classes, width_divisor)
    rng = np.random.default_rng(4)
    pixels = rng.uniform(0.1, 0.9, size=(batch, 3, size, size)).astype(np.float32)
    images = (pixels - np.asarray(MEAN, np.float32)[:, None, None]) / np.asarray(STD, np.float32)[:, None, None]
    targets = _near_tie(torch_model, jax_model, images, margin)
    with jax.enable_x64(float64):
        if float64:
            graphdef, state = nnx.split(jax_model)
            jax_model = nnx.merge(graphdef, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), state))
            torch_model, images = copy.deepcopy(torch_model).double(), images.astype(np.float64)
        ref, adv = torchattacks_deepfool.deepfool(torch_model, images, targets, mean=MEAN, std=STD)
        with torch.no_grad():
            mean, std = (torch.as_tensor(np.asarray(v, adv.dtype))[:, None, None] for v in (MEAN, STD))
            assert (torch_model((torch.as_tensor(adv) - mean) / std).argmax(1).numpy() != targets).all()
        ours = run_method("deepfool", jax_model, images, targets, mean=MEAN, std=STD)
    # converged before torchattacks' cap of 50 steps (5 on one CPU, 6 on another: float32 rounding)
    assert ours["fooled"].all() and (ours["steps"] >= 1).all() and (ours["steps"] < 50).all()
    assert ref.max() > 0
    assert ours["saliency"].dtype == images.dtype
    print("max |ours - torchattacks| / max |torchattacks|:", np.abs(ours["saliency"] - ref).max() / ref.max())
    assert np.abs(ours["saliency"] - ref).max() / ref.max() <= tolerance
    return ours


# The step is proportional to f_k - f_t, which at the start is about the margin: the float32 difference of the two
# networks' logits (1e-7 narrow, 2e-7 full width) divided by it bounds the relative error of the maps; a smaller
# margin loses precision, a larger one takes more steps (torchattacks: one image at a time). The narrow network
# runs in float64 on both sides: on random 64x64 images one of its max-pools holds a near tie that float32 rounding
# (which differs between CPUs) can swap, moving the gradient, hence the first step, at a few pixels (measured on
# one machine 1.2e-5 in float32, on another 2.4e-2; in float64 1.3e-7), as for Integrated Gradients
# (``test_methods_captum``). Full width, float32: 2.8e-5 and 2.0e-5 on those machines (float64 3.0e-8).


def test_parity_with_torchattacks_narrow_float64():
    ours = _parity(10, 8, 64, 3, 1e-3, 1e-6, float64=True)
    assert ours["saliency"].shape == (3, 64, 64)


@pytest.mark.slow  # 45 s under load: the second CI step
def test_parity_with_torchattacks_full_width():
    _parity(5, 1, 32, 1, 2e-2, 1e-4)
