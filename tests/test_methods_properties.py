"""Properties of the explanation methods that need no reference library: Integrated Gradients' completeness,
chunking that changes no number, the model interface the methods use (named layers, replaced backward passes),
and Grad-CAM and occlusion on cases whose answer is computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perturb_jax.methods import (
    common,
    grad_cam,
    integrated_gradients,
    occlusion,
    smoothgrad,
)
from perturb_jax.runtime.vgg import VGG19BN, adaptive_avg_pool_matrix


def random_vgg(seed: int, shifts: float) -> VGG19BN:
    """A random VGG19BN(10, 8): torchvision's initialisation, batch-norm scales and variances drawn as the torch
    fixtures draw them, and their biases and means and every conv and linear bias drawn as there times ``shifts``;
    with ``shifts=0`` the network is positively homogeneous (f(a x) = a f(x) for a > 0). Numpy draws, no init run."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: VGG19BN(10, 8, rngs=nnx.Rngs(0))))
    pure = nnx.to_pure_dict(state)
    rng = np.random.default_rng(seed)
    for conv in pure["convs"].values():
        kh, kw, _, c_out = conv["kernel"].shape
        conv["kernel"] = rng.normal(0, np.sqrt(2 / (kh * kw * c_out)), conv["kernel"].shape)
        conv["bias"] = shifts * rng.normal(0, 0.05, conv["bias"].shape)
    for bn in pure["bns"].values():
        n = bn["scale"].shape
        bn.update(scale=rng.uniform(0.5, 1.5, n), bias=shifts * rng.normal(0, 0.2, n),
                  mean=shifts * rng.normal(0, 0.2, n), var=rng.uniform(0.5, 2.0, n))
    for fc in pure["fc"].values():
        fc["kernel"] = rng.normal(0, 0.01, fc["kernel"].shape)
        fc["bias"] = shifts * rng.normal(0, 0.05, fc["bias"].shape)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), pure))
    return nnx.merge(graphdef, state)


def _completeness_error(steps, targets):
    """model, images -> |sum(attributions) - (C_t(x) - C_t(0))| summed over images, over sum |C_t(x) - C_t(0)|,
    for IG with Gauss-Legendre at ``steps``; jitted, the weights an argument."""

    def error(state, graphdef, x):
        model = nnx.merge(graphdef, state)
        attr = integrated_gradients.attributions(model, x, targets, steps, "gausslegendre", 1024)
        delta = common.target_logits(model, x, targets) - common.target_logits(model, jnp.zeros_like(x), targets)
        return jnp.abs(attr.sum(axis=(1, 2, 3)) - delta).sum() / jnp.abs(delta).sum()

    fn = jax.jit(error, static_argnums=1)
    return lambda model, x: float(fn(*reversed(nnx.split(model)), x))


def test_integrated_gradients_completeness():
    """Sum of the attributions = C_t(x) - C_t(0) up to the quadrature error (Gauss-Legendre; 4 images, 32x32).

    Homogeneous network (``shifts=0``): the integrand is constant along the path (Euler), so 50 steps are exact to
    float32 rounding (measured 5e-7 of sum |C_t(x) - C_t(0)|). With shifts the path from 0 crosses many ReLU and
    max-pool boundaries, each a jump of the integrand, so the error falls slowly and unevenly with the steps
    (fixtures' shifts, one draw: 1.03, 0.33, 0.18, 0.024, 0.022, 0.022, 0.0077 at 4, 8, 16, 50, 100, 200, 512) and
    depends on the draw: at 50 steps 2.5e-2 to 8.7e-2 over 12 draws of model and images with the fixtures' shifts,
    7.5e-3 to 2.4e-2 with a tenth of them, used here (this draw: 0.091 at 8 steps, 0.0165 at 50)."""
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 32, 32, 3)), jnp.float32)
    t = jnp.array([0, 3, 7, 9])
    homogeneous, shifted = random_vgg(0, shifts=0.0), random_vgg(0, shifts=0.1)
    error_50 = _completeness_error(50, t)
    assert error_50(homogeneous, x) < 1e-5
    at_8, at_50 = _completeness_error(8, t)(shifted, x), error_50(shifted, x)
    assert at_8 > 2 * at_50
    assert at_50 < 3e-2


class _StandIn:
    """A stand-in for ``VGG19BN`` in the methods' calls: C_k(x) = sum over pixels and channels of
    W_k * (x + curvature * tanh(x)); linear with ``curvature=0``, smooth (no ReLU or max-pool boundaries) else."""

    def __init__(self, weights, curvature=0.0):
        self.weights, self.curvature = weights, curvature  # (K, H, W, C)

    def input_grad_kernels(self):
        return None

    def __call__(self, x, **kwargs):
        return jnp.einsum("bhwc,khwc->bk", x + self.curvature * jnp.tanh(x), self.weights), {}


CHUNKED = [(integrated_gradients, {"steps": 7, "quadrature": "gausslegendre"}),
           (smoothgrad, {"samples": 7, "noise_level": 0.15}),
           (occlusion, {"window": 4, "stride": 2})]


def test_samples_per_pass_spreads_samples_evenly_over_the_fewest_passes():
    """(chunk_size, batch, total) -> samples per image a pass: 256 // 8 = 32 allows 2 passes for 50, so 25 each;
    256 // 32 = 8 needs 7 passes, 8 each (56, the fewest padded); one pass holds all; a batch over chunk_size
    still takes one sample a pass."""
    assert common.samples_per_pass(256, 8, 50) == 25
    assert common.samples_per_pass(256, 32, 50) == 8
    assert common.samples_per_pass(200, 8, 50) == 25
    assert common.samples_per_pass(1000, 8, 50) == 50
    assert common.samples_per_pass(6, 2, 7) == 3
    assert common.samples_per_pass(6, 2, 49) == 3
    assert common.samples_per_pass(4, 16, 10) == 1


@pytest.mark.parametrize("module,options", CHUNKED, ids=[m.METHOD.name for m, _ in CHUNKED])
def test_chunking_changes_no_number(module, options):
    """chunk_size 1 (one sample a pass), 6 (3 a pass for 2 images: 7 steps or samples and 49 windows leave a
    partial last pass) and 1000 (one pass) agree to 1e-5 of the map's maximum (measured 3e-8 to 1.5e-7). On a
    smooth stand-in (16x16): with VGG19BN a different batch changes XLA's float32 rounding, which can move a
    gradient across a max-pool tie (``test_methods_captum``), a change that is no chunking's."""
    rng = np.random.default_rng(3)
    model = _StandIn(jnp.asarray(rng.standard_normal((6, 16, 16, 3)), jnp.float32), curvature=2.0)
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32)
    t = jnp.array([2, 5])
    def saliency(x, chunk_size):
        return module.explain(model, x, t, jax.random.key(0), options | {"chunk_size": chunk_size})["saliency"]

    maps = [np.asarray(jax.jit(saliency, static_argnums=1)(x, c)) for c in (1, 6, 1000)]
    scale = np.abs(maps[2]).max()
    assert scale > 0
    for m in maps[:2]:
        assert np.abs(m - maps[2]).max() <= 1e-5 * scale


def test_layers_are_the_torchvision_modules_outputs_in_every_backward_mode():
    """``layers=`` returns the output of the torch replica's module of that name (forward hooks), to 1e-5 of its
    largest value, and no ``backward`` mode changes a value (to 1e-6)."""
    torch = pytest.importorskip("torch")
    from torch_fixtures import paired_models

    torch_model, jax_model = paired_models(10, 8)
    names = ["features.39", "features.51", "avgpool", "classifier.4"]
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    seen = {}
    handles = [torch_model.get_submodule(n).register_forward_hook(
        lambda module, args, out, n=n: seen.__setitem__(n, out.detach().numpy().copy())) for n in names]
    with torch.no_grad():
        torch_model(torch.from_numpy(x))
    for h in handles:
        h.remove()
    images = jnp.asarray(x.transpose(0, 2, 3, 1))
    graphdef, state = nnx.split(jax_model)
    forward = jax.jit(lambda s, x, backward: nnx.merge(graphdef, s)(x, layers=names, backward=backward),
                      static_argnums=2)
    plain = None
    for backward in ("plain", "guided", "excitation"):
        logits, acts = forward(state, images, backward)
        assert set(acts) == set(names)
        for n in names:
            ref = seen[n] if seen[n].ndim == 2 else seen[n].transpose(0, 2, 3, 1)
            assert acts[n].shape == ref.shape
            assert np.abs(np.asarray(acts[n]) - ref).max() <= 1e-5 * np.abs(ref).max(), (backward, n)
        if plain is None:
            plain = logits, acts
        else:
            for a, b in zip(jax.tree.leaves((logits, acts)), jax.tree.leaves(plain)):
                assert np.abs(np.asarray(a - b)).max() <= 1e-6 * np.abs(np.asarray(b)).max(), backward


def test_grad_cam_by_hand():
    """Grad-CAM at ``features.51`` (4x4 at 64x64) when the classifier is linear (its biases keep every ReLU open):
    dC_t/d(avgpool) is then the product of the three weight matrices, the adaptive pool's transpose spreads it over
    the 2x2 max-pool outputs, and each pool window hands its share to one of its four inputs, so alpha_c (the
    spatial mean over 4x4) is the sum over the pool outputs / 16; the map is ReLU(sum_c alpha_c A^c), upsampled
    16x by nearest."""
    model = random_vgg(5, shifts=1.0)
    for fc in model.fc[:2]:
        fc.bias[...] = jnp.full_like(fc.bias[...], 50.0)
    x = jnp.asarray(np.random.default_rng(6).standard_normal((2, 64, 64, 3)), jnp.float32)
    t = jnp.array([1, 8])
    ours = np.asarray(grad_cam.grad_cam(model, x, t, "features.51", "nearest"))

    _, acts = model(x, layers=["features.51", "classifier.0", "classifier.3"])
    assert (acts["classifier.0"] > 0).all() and (acts["classifier.3"] > 0).all()
    w0, w1, w2 = (np.asarray(fc.kernel[...], np.float64) for fc in model.fc)
    a = np.asarray(acts["features.51"], np.float64)  # (B, 4, 4, C)
    pool = adaptive_avg_pool_matrix(2, 7).astype(np.float64)  # (7, 2)
    g_avg = (w0 @ w1 @ w2[:, np.asarray(t)]).T.reshape(2, 7, 7, -1)  # dC_t/d(avgpool output), NHWC flattening
    g_max = np.einsum("oh,pw,bopc->bhwc", pool, pool, g_avg)  # dC_t/d(features.52), (B, 2, 2, C)
    alpha = g_max.sum(axis=(1, 2)) / 16
    cam = np.maximum(np.einsum("bc,bhwc->bhw", alpha, a), 0)
    expected = np.repeat(np.repeat(cam, 16, axis=1), 16, axis=2)
    assert expected.max() > 0 and (expected == 0).any()
    assert np.abs(ours - expected).max() <= 1e-4 * expected.max()


def test_occlusion_on_a_linear_stand_in():
    """Window 3, stride 2 on 6x7 images: Captum's rule puts windows at rows 0, 2, 4 (the last cut to 2 rows) and
    columns 0, 2, 4 (exactly reaching the edge); each pixel's value is the mean, over the windows covering it,
    of their drops, checked against a plain loop over windows."""
    rng = np.random.default_rng(7)
    weights = rng.standard_normal((3, 6, 7, 3)).astype(np.float32)
    x = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)
    t = np.array([2, 0])
    out = occlusion.explain(_StandIn(jnp.asarray(weights)), jnp.asarray(x), jnp.asarray(t), None,
                            {"window": 3, "stride": 2, "chunk_size": 4})["saliency"]
    contrib = (weights[t] * x).sum(axis=-1)  # (B, H, W)
    total, count = np.zeros_like(contrib), np.zeros((6, 7))
    for y0 in (0, 2, 4):
        for x0 in (0, 2, 4):
            total[:, y0:y0 + 3, x0:x0 + 3] += contrib[:, y0:y0 + 3, x0:x0 + 3].sum(axis=(1, 2))[:, None, None]
            count[y0:y0 + 3, x0:x0 + 3] += 1
    assert count.min() == 1
    np.testing.assert_allclose(np.asarray(out), total / count, rtol=1e-5, atol=1e-5 * np.abs(total).max())
