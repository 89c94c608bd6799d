"""The ALN's pieces on hand-computed values: Gumbel straight-through sampling, segment means, Eq. (1), the adaptive
rule of Sec. 2.4, the transposed convolution, and one data-parallel step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from aln_jax import config as config_lib, masking, models, objectives, step as step_lib


@pytest.mark.parametrize("p", [0.03, 0.3, 0.5, 0.9])
def test_gumbel_sampler_is_bernoulli_p(p):
    n = 200_000
    draws = masking.gumbel_bernoulli(jnp.full((n,), p, jnp.float32), jax.random.key(7))
    assert set(np.unique(np.asarray(draws))) <= {0.0, 1.0}
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(float(draws.mean()) - p) < 4 * sd


def test_gumbel_sampler_extremes_and_independence():
    draws = masking.gumbel_bernoulli(jnp.array([0.0, 1.0] * 500), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(draws), [0.0, 1.0] * 500)
    # Two entries of one call are independent: P(both) = p^2.
    pairs = masking.gumbel_bernoulli(jnp.full((100_000, 2), 0.5), jax.random.key(1))
    both = float(jnp.mean(pairs[:, 0] * pairs[:, 1]))
    assert abs(both - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 100_000)


def test_straight_through_gradient_is_identity():
    w = jnp.array([0.5, -2.0, 3.0])
    p = jnp.array([0.2, 0.5, 0.7])
    grad = jax.grad(lambda q: jnp.sum(w * masking.gumbel_bernoulli(q, jax.random.key(3))))(p)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(w))


def test_segment_means_against_a_numpy_loop():
    rng = np.random.default_rng(0)
    values = rng.random((12, 9)).astype(np.float32)
    segments = rng.integers(0, 7, (12, 9))
    segments[segments == 4] = 5  # segment 4 empty
    got = np.asarray(masking.segment_means(jnp.asarray(values), jnp.asarray(segments), 10))
    want = np.zeros(10, np.float32)
    for s in range(10):
        if (segments == s).any():
            want[s] = values[segments == s].mean()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_superpixel_mask_is_constant_on_each_superpixel_and_follows_p():
    segments = jnp.asarray(np.repeat(np.arange(4), 4).reshape(4, 4))  # row i is superpixel i
    probs = jnp.asarray([[1.0] * 4, [0.0] * 4, [1.0, 1.0, 0.0, 0.0], [0.0] * 4])  # superpixel means 1, 0, 0.5, 0
    mask = np.asarray(masking.superpixel_mask(probs, segments, jax.random.key(0), 8))
    np.testing.assert_array_equal(mask[[0, 1, 3]], [[1] * 4, [0] * 4, [0] * 4])
    assert len(np.unique(mask[2])) == 1  # one decision for the whole superpixel, not per pixel
    corrupted = np.asarray(masking.corrupt(jnp.ones((1, 4, 4, 3)), jnp.asarray(mask)[None], -7.0))
    np.testing.assert_array_equal(corrupted[0, 0], -7.0)
    np.testing.assert_array_equal(corrupted[0, 1], 1.0)


def test_confusion_loss_eq1():
    logits = jnp.array([[3.0, 1.0, 2.0], [0.5, 0.5, 0.5]])
    np.testing.assert_allclose(np.asarray(objectives.confusion(logits)), [3 - 1.5, 0.0])


def _settings(**kw):
    c = config_lib.get_config("paper,tiny")
    for k, v in kw.items():
        c.train[k] = v
    return step_lib.Settings.from_config(c)


def test_adaptive_rule_moves_lambda_and_switches_training():
    s = _settings(target_accuracy=0.1, lambda_rate=0.5, lambda_min=0.01, lambda_max=5.0)
    lam, train_k = step_lib.adapt(jnp.asarray(1.0), jnp.asarray(0.4), s)
    assert float(lam) == pytest.approx(np.exp(-0.5)) and not bool(train_k)
    lam, train_k = step_lib.adapt(jnp.asarray(1.0), jnp.asarray(0.05), s)
    assert float(lam) == pytest.approx(np.exp(0.5)) and bool(train_k)
    lam, train_k = step_lib.adapt(jnp.asarray(1.0), jnp.asarray(0.1), s)  # at the target: both train
    assert float(lam) > 1 and bool(train_k)
    assert float(step_lib.adapt(jnp.asarray(4.0), jnp.asarray(0.0), s)[0]) == pytest.approx(5.0)  # clipped
    assert float(step_lib.adapt(jnp.asarray(0.011), jnp.asarray(0.9), s)[0]) == pytest.approx(0.01)
    frozen = _settings(freeze_classifier=True)
    assert not bool(step_lib.adapt(jnp.asarray(1.0), jnp.asarray(0.0), frozen)[1])


def test_deconv2x_equals_flax_conv_transpose():
    rngs = nnx.Rngs(0)
    ours = models.Deconv2x(3, 5, rngs=rngs)
    ref = nnx.ConvTranspose(3, 5, (2, 2), strides=(2, 2), padding="VALID", rngs=rngs)
    # flax's ConvTranspose (transpose_kernel=False) applies the kernel flipped: ours scatters each input pixel
    # through the kernel as written, as torch's ConvTranspose2d does.
    ref.kernel.value = jnp.transpose(ours.kernel.value, (1, 2, 0, 3))[::-1, ::-1]
    ours.bias.value = ref.bias.value = jax.random.normal(jax.random.key(1), (5,))
    x = jax.random.normal(jax.random.key(2), (2, 4, 6, 3))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # 23 s idle (2026-12-07): the second CI step
def test_models_shapes():
    rngs = nnx.Rngs(0)
    corruption = models.CorruptionNet(32, (8, 16), 16, rngs=rngs)
    assert corruption(jnp.zeros((2, 32, 32, 3))).shape == (2, 32, 32)
    assert models.Classifier(10, (4, 4, 8, 8), 32, rngs=rngs)(jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


def _one_step(freeze: bool, target: float, pretrain: int = 0):
    c = config_lib.get_config("paper,tiny")
    c.train.freeze_classifier, c.train.target_accuracy, c.train.classifier_pretrain_steps = freeze, target, pretrain
    corruption = models.CorruptionNet(32, c.aln.corruption_widths, c.aln.bottleneck, rngs=nnx.Rngs(0))
    classifier = models.Classifier(10, c.aln.classifier_widths, 32, rngs=nnx.Rngs(1))
    tx_c, tx_k = optax.adam(1e-2), optax.adam(1e-2)
    state = step_lib.init_state(corruption, classifier, tx_c, tx_k, 1.0)
    before = jax.tree.map(np.asarray, state)
    mesh = step_lib.make_mesh()
    fn = step_lib.make_train_step(nnx.graphdef(corruption), nnx.graphdef(classifier), tx_c, tx_k,
                                  step_lib.Settings.from_config(c), mesh)
    rng = np.random.default_rng(0)
    batch = dict(images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                 labels=rng.integers(0, 10, 8).astype(np.int32),
                 segments=np.tile(np.repeat(np.arange(16, dtype=np.uint8), 64).reshape(32, 32), (8, 1, 1)),
                 position=np.arange(8, dtype=np.int32))
    batch = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()}
    state, metrics = fn(jax.device_put(state, NamedSharding(mesh, P())), batch, jax.random.key(0), 0)
    return before, jax.tree.map(np.asarray, state), jax.tree.map(float, metrics)


def _changed(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_step_trains_what_the_rule_says():
    before, after, m = _one_step(freeze=True, target=0.5)
    assert _changed(before["corruption"]["params"], after["corruption"]["params"])
    assert not _changed(before["classifier"], after["classifier"])
    assert int(after["step"]) == 1 and m["classifier_trained"] == 0.0
    assert 0 <= m["occluded_area"] <= 1 and np.isfinite(m["corruption_loss"])
    before, after, m = _one_step(freeze=False, target=0.99)
    assert m["accuracy_corrupted"] <= 0.99 and m["classifier_trained"] == 1.0
    assert _changed(before["classifier"]["params"], after["classifier"]["params"])
    assert float(after["lambda_reg"]) == pytest.approx(np.exp(0.01))
    before, after, m = _one_step(freeze=True, target=0.5, pretrain=1)  # pre-training: the classifier alone
    assert not _changed(before["corruption"], after["corruption"]) and float(after["lambda_reg"]) == 1.0
    assert _changed(before["classifier"]["params"], after["classifier"]["params"]) and m["occluded_area"] == 0


@pytest.mark.slow  # 30 s idle (2026-12-07): the second CI step
def test_folded_vgg_gives_the_logits_of_vgg_in_eval_mode():
    from perturb_jax.runtime import vgg as vgg_lib  # noqa: PLC0415
    from perturb_jax.runtime.vgg import VGG19BN, FoldedVGG  # noqa: PLC0415
    vgg = VGG19BN(10, 16, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for bn in vgg.bns:  # non-trivial statistics and affine terms, so that folding them is tested
        n = bn.scale.value.shape[0]
        bn.mean.value = jnp.asarray(rng.normal(0, 0.5, n), jnp.float32)
        bn.var.value = jnp.asarray(rng.uniform(0.2, 2.0, n), jnp.float32)
        bn.scale.value = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
        bn.bias.value = jnp.asarray(rng.normal(0, 0.2, n), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    expected = np.asarray(vgg(x)[0])
    folded = FoldedVGG(vgg)
    np.testing.assert_allclose(np.asarray(folded(x)), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    compiled = vgg_lib.folded(vgg)  # the same folding in one compiled call
    np.testing.assert_allclose(np.asarray(compiled(x)), np.asarray(folded(x)), rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    assert all(isinstance(v, nnx.Param) for _, v in nnx.iter_graph(folded) if isinstance(v, nnx.Variable))


class _RegionClassifier(nnx.Module):
    """Logit 0 is 4 x the mean of the pixels of rows 0-7 (segment 0 below), the other logits are 0: occluding that
    segment alone (fill 0) confuses it completely."""

    def __init__(self):
        self.w = nnx.Param(jnp.asarray(4.0))

    def __call__(self, x):
        top = self.w.value * jnp.mean(x[:, :8], axis=(1, 2, 3))
        return jnp.concatenate([top[:, None], jnp.zeros((len(x), 3))], axis=1)


def test_per_image_masks_find_the_segment_the_classifier_uses():
    from aln_jax.experiments import diagnose  # noqa: PLC0415
    graphdef, params = nnx.split(_RegionClassifier())
    s = _settings(objective="confusion")
    images = np.full((2, 32, 32, 3), 255, np.uint8)  # normalised: 2 everywhere
    segments = np.tile(np.repeat(np.arange(4, dtype=np.int32), 256).reshape(32, 32), (2, 1, 1))
    theta = diagnose.optimise_masks(lambda p, x: nnx.merge(graphdef, p)(x), params, images, np.zeros(2, np.int32),
                                    segments, np.zeros((2, s.num_segments)), s, 0.5, 150)[:, :4]
    p = np.asarray(jax.nn.sigmoid(theta))
    assert (p[:, 0] > 0.9).all() and (p[:, 1:] < 0.1).all(), p
