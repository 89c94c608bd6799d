"""The ALN's variant switches: each objective by hand, the fills, the class selector, the VGG encoder, the config
variants and their one-line errors, and one train-and-evaluate cycle of the default variant on the tiny data."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aln_jax import config as config_lib, masking, models, objectives, step as step_lib, train
from eval.errors import ConfigError
from perturb_jax.runtime.checkpoint import EMBEDDED as EMBEDDED_CHECKPOINT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_objectives_by_hand():
    logits = jnp.array([[3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    np.testing.assert_allclose(objectives.confusion(logits), [3 - 1.0, 0.0], atol=1e-6)
    log_p0 = 3 - np.log(np.exp([3, 1, 0, 2]).sum())
    # image 0: log p of its label; image 1 is at chance (log 1/4), the floor.
    np.testing.assert_allclose(objectives.destroy(logits, labels), [log_p0, -np.log(4)], atol=1e-6)
    below = jnp.array([[-5.0, 1.0, 1.0, 1.0]])  # log p(0) far below chance: floored
    np.testing.assert_allclose(objectives.destroy(below, jnp.array([0])), [-np.log(4)], atol=1e-6)
    kept = jnp.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    ce = -np.array([0 - np.log(np.exp([0, 1, 0, 0]).sum()), 2 - np.log(np.exp([0, 0, 2, 0]).sum())])
    np.testing.assert_allclose(objectives.per_image("preserve_destroy", logits, labels, kept, 0.5),
                               [log_p0 + 0.5 * ce[0], -np.log(4) + 0.5 * ce[1]], atol=1e-6)
    np.testing.assert_allclose(objectives.per_image("confusion", logits, labels), objectives.confusion(logits))
    with pytest.raises(ValueError, match="config.train.objective"):
        objectives.per_image("bogus", logits, labels)


def _settings(**kw):
    c = config_lib.get_config("tiny")
    return dataclasses.replace(step_lib.Settings.from_config(c), **kw)


def test_corruption_objective_scores_the_occluded_and_the_kept_image():
    """A linear classifier whose logit k is the mean of channel k % 3 over the left half (k < 3) or the right half:
    occluding the left half with the constant 0 zeroes logits 0-2; keeping only it zeroes logits 3-5."""
    images = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3), minval=0.5, maxval=1.0)
    masks = jnp.zeros((2, 4, 4)).at[:, :, :2].set(1.0)
    labels = jnp.array([0, 4])

    def classifier(x):
        return jnp.concatenate([x[:, :, :2].mean((1, 2)), x[:, :, 2:].mean((1, 2))], axis=-1)

    keys = jax.random.split(jax.random.key(1), 2)
    for objective in objectives.OBJECTIVES:
        s = _settings(objective=objective, fill="constant", fill_value=0.0, preserve_weight=2.0)
        values, logits, occluded = step_lib.corruption_objective(classifier, images, masks, labels, keys, s)
        np.testing.assert_array_equal(occluded[:, :, :2], 0.0)
        np.testing.assert_array_equal(occluded[:, :, 2:], images[:, :, 2:])
        occluded_logits = classifier(occluded)
        kept_logits = classifier(images * masks[..., None])
        want = objectives.per_image(objective, occluded_logits, labels, kept_logits, 2.0)
        np.testing.assert_allclose(values, want, rtol=1e-6)
        np.testing.assert_allclose(logits, occluded_logits, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(occluded_logits[:, :3]), 0.0)


def test_fills():
    image = jax.random.normal(jax.random.key(0), (16, 16, 3))
    key = jax.random.key(3)
    np.testing.assert_array_equal(masking.fill(image, "constant", -0.5, 2.0, key), -0.5)
    flat = jnp.full((16, 16, 3), 0.7)
    np.testing.assert_allclose(masking.fill(flat, "blur", 0.0, 2.0, key), flat, rtol=1e-6)  # rows sum to 1
    impulse = jnp.zeros((16, 16, 1)).at[8, 8, 0].set(1.0)
    blurred = np.asarray(masking.fill(impulse, "blur", 0.0, 2.0, key))[..., 0]
    d = np.arange(16)[:, None] - np.arange(16)[None, :]
    w = np.exp(-0.5 * d ** 2 / 4.0) * (np.abs(d) <= 6)  # sigma 2, cut at 3 sigma, rows renormalised at the edges
    column = (w / w.sum(1, keepdims=True))[:, 8]
    np.testing.assert_allclose(blurred, np.outer(column, column), rtol=1e-5, atol=1e-8)  # separable Gaussian
    noise = np.asarray(masking.fill(jnp.zeros((64, 64, 3)), "noise", 0.0, 2.0, key))
    assert abs(noise.mean()) < 0.03 and abs(noise.std() - 1) < 0.03
    seen = set()
    for i in range(30):
        k = jax.random.key(i)
        out = masking.fill(image, "random", -0.5, 2.0, k)
        candidates = [masking.fill(image, kind, -0.5, 2.0, k) for kind in ("constant", "blur", "noise")]
        matches = [j for j, c in enumerate(candidates) if np.array_equal(out, c)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="config.aln.fill"):
        masking.fill(image, "bogus", 0.0, 2.0, key)


def test_class_embedding_reaches_the_decoder():
    net = models.CorruptionNet(16, (4, 8), 8, num_classes=3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    a, b = net(x, jnp.array([0, 0])), net(x, jnp.array([1, 2]))
    assert not np.allclose(a, b)
    graphdef, params = nnx.split(net, nnx.Param)
    grads = jax.grad(lambda p: nnx.merge(graphdef, p)(x, jnp.array([1, 1])).sum())(params)
    rows = np.abs(np.asarray(grads["embed"]["embedding"].value)).sum(1)
    assert rows[1] > 0 and rows[0] == 0 and rows[2] == 0  # only the given class's embedding is used
    with pytest.raises(ValueError, match="aln.class_conditional"):
        net(x)


def test_the_vgg_encoder_starts_equal_to_the_classifier():
    c = config_lib.get_config()
    corruption, classifier = train.build_models(c, 10)
    encoder = corruption.encoder
    assert isinstance(encoder, models.VGGEncoder) and encoder.block_sizes == (2, 2, 4, 4, 4)
    assert encoder.channels == (8, 16, 32, 64, 64)
    for mine, theirs in zip(encoder.convs, classifier.convs):
        np.testing.assert_array_equal(mine.kernel.value, theirs.kernel.value)
        np.testing.assert_array_equal(mine.bias.value, theirs.bias.value)
    assert mine.kernel.value is not theirs.kernel.value  # two copies: fine-tuning one leaves the other
    graphdef, params = nnx.split(corruption, nnx.Param)
    x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    grads = jax.grad(lambda p: nnx.merge(graphdef, p)(x, jnp.array([3])).sum())(params)
    assert not any(np.any(g) for g in jax.tree.leaves(grads["encoder"]))  # aln.freeze_encoder: no gradient
    assert any(np.any(g) for g in jax.tree.leaves(grads["head"]))
    skips = encoder(x)
    assert [s.shape[1:] for s in skips] == [(64 >> k, 64 >> k, ch) for k, ch in enumerate(encoder.channels)]
    assert corruption(x, jnp.array([3])).shape == (1, 64, 64)


def test_variants_compose():
    default, paper = config_lib.get_config(), config_lib.get_config("paper")
    assert (default.train.objective, default.aln.fill, default.aln.class_conditional) == (
        "preserve_destroy", "random", True)
    assert (paper.train.objective, paper.aln.fill, paper.aln.encoder, paper.aln.classifier,
            paper.aln.class_conditional, paper.train.freeze_classifier) == (
        "confusion", "constant", "scratch", "small", False, False)
    both = config_lib.get_config("plain,paper")
    assert both.data.builder_config == "plain" and both.train.objective == "confusion"
    assert config_lib.get_config("tiny,paper").to_dict() == config_lib.get_config("paper,tiny").to_dict()
    with pytest.raises(ConfigError, match="config variant 'tinyy' is unknown"):
        config_lib.get_config("paper,tinyy")


def test_bad_variant_fields_fail_in_one_line(tmp_path):
    def fails(field, **kw):
        c = config_lib.get_config("tiny")
        for k, v in kw.items():
            group, leaf = k.split("__")
            c[group][leaf] = v
        with pytest.raises(ConfigError, match=field.replace(".", r"\.") + ":"):
            config_lib.validate(c, jax.device_count(), 1)

    fails("train.objective", train__objective="hide")
    fails("aln.fill", aln__fill="gray")
    fails("aln.fill_value", aln__fill_value=float("nan"))
    fails("aln.fill_value", aln__fill_value=float("inf"))
    fails("aln.fill_sigma", aln__fill_sigma=0.0)
    fails("train.preserve_weight", train__preserve_weight=-1.0)
    fails("train.lambda_reg", train__lambda_reg=float("inf"))
    fails("aln.encoder", aln__encoder="imagenet")
    other = tmp_path / "resnet"
    other.mkdir()
    (other / "model.json").write_text(json.dumps({"architecture": "resnet50"}))
    fails("aln.encoder", aln__encoder=str(other))
    fails("aln.corruption_widths", aln__corruption_widths=(4, 4, 4, 4, 4))
    fails("aln.freeze_encoder", aln__encoder="scratch")
    fails("train.logit_bound", train__logit_bound=-1.0)
    fails("data.builder_config", data__builder_config="plainn")
    c = config_lib.get_config("imagenet")
    c.data.builder_config = "plain"
    with pytest.raises(ConfigError, match=r"config\.data\.builder_config: imagenet2012 has no builder configs"):
        config_lib.validate(c, jax.device_count(), 1)


def test_eval_split_beyond_the_data_fails_before_training(tmp_path):
    work = tmp_path / "aln"
    proc = subprocess.run([sys.executable, "-m", "aln_jax.main", "--config=configs/aln.py:tiny", f"--workdir={work}",
                           "--config.data.eval_split=validation[40:50]"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("error: config.data.eval_split: 'validation[40:50]'"), last
    assert "Traceback" not in proc.stderr and not os.path.exists(work / "checkpoints")


def test_default_variant_trains_and_evaluates_on_tiny_data(tmp_path):
    work = tmp_path / "aln"
    proc = subprocess.run([sys.executable, "-m", "aln_jax.main", "--config=configs/aln.py:tiny", f"--workdir={work}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(work / "config.json") as f:
        stored = json.load(f)
    assert stored["train"]["objective"] == "preserve_destroy" and stored["aln"]["encoder"] == EMBEDDED_CHECKPOINT
    assert stored["train"]["freeze_classifier"] is False and stored["train"]["classifier_learning_rate"] == 1e-4
    records = [json.loads(line) for line in open(work / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(np.isfinite(r["corruption_loss"]) for r in records)
    with open(work / "eval" / "results.json") as f:
        summary = json.load(f)["summary"]
    assert summary["num_images"]["eval"] == 16 and os.path.exists(work / "eval" / "figure.png")


def test_bounded_logits_keep_a_gradient_that_never_pushes_outward():
    z = jnp.array([-9.0, -4.0, 0.5, 4.0, 9.0])
    np.testing.assert_array_equal(masking.bounded_logits(z, 4.0), [-4.0, -4.0, 0.5, 4.0, 4.0])
    up = jax.grad(lambda v: jnp.sum(masking.bounded_logits(v, 4.0)))(z)  # descent lowers every logit
    np.testing.assert_array_equal(up, [0.0, 1.0, 1.0, 1.0, 1.0])  # -9 may not go further down; 9 may come back
    down = jax.grad(lambda v: -jnp.sum(masking.bounded_logits(v, 4.0)))(z)  # descent raises every logit
    np.testing.assert_array_equal(down, [-1.0, -1.0, -1.0, -1.0, 0.0])
    p = masking.occlusion_probability(jnp.array([-50.0]), 4.0)
    raise_p = jax.grad(lambda v: -masking.occlusion_probability(v, 4.0)[0])(jnp.array([-50.0]))
    lower_p = jax.grad(lambda v: masking.occlusion_probability(v, 4.0)[0])(jnp.array([-50.0]))
    np.testing.assert_allclose(p, jax.nn.sigmoid(-4.0), rtol=1e-6)
    # a saturated probability can still be raised at sigmoid'(4) (not sigmoid'(-50) ~ 2e-22), never pushed lower
    np.testing.assert_allclose(raise_p, -jax.nn.sigmoid(-4.0) * jax.nn.sigmoid(4.0), rtol=1e-5)
    np.testing.assert_array_equal(lower_p, 0.0)
    np.testing.assert_array_equal(masking.occlusion_probability(jnp.array([-50.0]), 0.0), jax.nn.sigmoid(-50.0))
