"""The main job end to end on the tiny embedded split: outputs, resumption, and bad input."""

import json
import os
import re
import runpy
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eval import boxes as box_ops
from perturb_jax.runtime import checkpoint
from perturb_jax.explain import job as explain, results_store
from eval.errors import ConfigError
from perturb_jax.runtime.vgg import VGG19BN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny variant of the guided config, a random narrow classifier, the tiny data in a private data_dir."""
    base = tmp_path_factory.mktemp("tiny")
    checkpoint.save_model(VGG19BN(10, 8, rngs=nnx.Rngs(0)), str(base / "model"), num_classes=10, width_divisor=8)
    config = runpy.run_path(f"{ROOT}/configs/guided.py")["get_config"]("tiny")
    config.model.checkpoint = str(base / "model")
    config.data.data_dir = str(base / "tfds")
    return config, base


def _run(config, workdir):
    explain.explain_and_evaluate(config, str(workdir))
    with open(workdir / "results.json") as f:
        return json.load(f)


def test_job_writes_everything_and_resumes_identically(tiny):
    config, base = tiny
    work = base / "work"
    first = _run(config, work)
    summary, rows = first["summary"], first["per_image"]
    assert summary["num_images"]["tune"] == 6 and summary["num_images"]["eval"] == 10
    assert [(r["split"], r["method"]) for r in rows] == [
        (split, method) for split, n in (("tune", 6), ("eval", 10))
        for method in ("perceptual_ball_guided", "gradient") for _ in range(n)]
    assert [r["image_id"] for r in rows][:2] == ["validation_00000", "validation_00001"]
    for name in ("results.csv", "table.md", "figure.png"):
        assert (work / name).stat().st_size > 0
    # Batches of 4: tune 4 + 2, eval 4 + 4 + 2; the records, and each method's maps with its options.
    batches = ["eval_00000.npz", "eval_00001.npz", "eval_00002.npz", "tune_00000.npz", "tune_00001.npz"]
    assert sorted(os.listdir(work / "maps")) == batches[:3] + ["gradient", "perceptual_ball"] + batches[3:]
    for method in ("gradient", "perceptual_ball"):
        assert sorted(os.listdir(work / "maps" / method)) == batches[:3] + ["options.json"] + batches[3:]
    # Each reported box is the stored map's box at the tuned alpha; its IoU is the VOC +1 IoU with the truth.
    stored = results_store.read_split(str(work), "eval", ["perceptual_ball"])
    alphas = summary["chosen_alpha"]["perceptual_ball_guided"]
    for i, row in enumerate(r for r in rows if r["split"] == "eval" and r["method"] == "perceptual_ball_guided"):
        for strategy, alpha in alphas.items():
            box = box_ops.saliency_boxes(stored["perceptual_ball/saliency"][i], strategy, [alpha])[0]
            assert row[f"{strategy}_box"] == " ".join(str(int(v)) for v in box)
            (y0, x0, y1, x1), (g0, h0, g1, h1) = box, stored["boxes"][i][0]
            inter = max(0, min(y1, g1) - max(y0, g0) + 1) * max(0, min(x1, h1) - max(x0, h0) + 1)
            union = (y1 - y0 + 1) * (x1 - x0 + 1) + (g1 - g0 + 1) * (h1 - h0 + 1) - inter
            assert row[f"{strategy}_iou"] == pytest.approx(inter / union, abs=1e-4)
    best = summary["localisation_error"]["perceptual_ball_guided"]["best"]
    eval_rows = [r for r in rows if r["split"] == "eval" and r["method"] == "perceptual_ball_guided"]
    assert best["eval_error"] == pytest.approx(1 - np.mean([r[f"{best['strategy']}_correct"] for r in eval_rows]))
    assert summary["localisation_error"]["whole_image"]["eval_error"] == 1.0  # objects cover < 50% of the image

    # A second run on the same workdir computes nothing and writes the same numbers.
    stamp = os.path.getmtime(work / "maps" / "eval_00001.npz")
    assert _run(config, work) == first
    assert os.path.getmtime(work / "maps" / "eval_00001.npz") == stamp
    # An interrupted run (a batch's records or one method's maps missing) recomputes only that, with identical
    # numbers (the seconds per image change with the recomputed batch's own time).
    for missing in ("eval_00001.npz", "perceptual_ball/eval_00001.npz"):
        os.remove(work / "maps" / missing)
        again = _run(config, work)
        first["summary"]["seconds_per_image"] = again["summary"]["seconds_per_image"]
        assert again == first


def test_a_new_method_on_a_finished_workdir_computes_only_its_maps(tiny):
    config, base = tiny
    work = base / "more"
    shutil.copytree(base / "work", work)  # the finished run of the first test
    stamps = {p: os.path.getmtime(p) for p in (work / "maps").rglob("*.npz")}
    more = config.copy_and_resolve_references()
    more.methods = ("perceptual_ball", "gradient", "grad_cam")
    summary = _run(more, work)["summary"]
    assert {p: os.path.getmtime(p) for p in stamps} == stamps
    assert len(list((work / "maps" / "grad_cam").glob("*.npz"))) == 5
    assert summary["methods"] == ["perceptual_ball_guided", "gradient", "grad_cam"]
    assert 0 <= summary["localisation_error"]["grad_cam"]["best"]["eval_error"] <= 1
    # Its maps were made with its options: another layer is refused, naming the option.
    other = more.copy_and_resolve_references()
    other.method.grad_cam.layer = "features.48"
    with pytest.raises(ConfigError, match="method.grad_cam.layer"):
        explain.explain_and_evaluate(other, str(work))


def test_a_non_finite_map_fails_that_image_for_that_method_only(tiny, monkeypatch):
    config, base = tiny
    from perturb_jax.methods import common, gradient

    def half_broken(model, images, targets, key, options):
        maps = gradient.explain(model, images, targets, key, options)["saliency"]
        return {"saliency": maps.at[0].set(jnp.nan)}  # the first image of every batch

    monkeypatch.setattr(gradient, "METHOD", common.Method("gradient", half_broken, {}, "test"))
    only = config.copy_and_resolve_references()
    only.methods = ("gradient", "grad_cam")
    result = _run(only, base / "nan")
    rows = [r for r in result["per_image"] if r["split"] == "eval"]
    assert [r["failed"] for r in rows if r["method"] == "gradient"] == [i % 4 == 0 for i in range(10)]
    assert not any(r["failed"] for r in rows if r["method"] == "grad_cam")
    assert result["summary"]["failed_images"]["gradient"] == [
        "validation_00000", "validation_00004", "validation_00006", "validation_00010", "validation_00014"]
    stored = results_store.read_split(str(base / "nan"), "eval", ["gradient"])
    assert np.isfinite(stored["gradient/saliency"]).all()


def test_a_label_the_model_does_not_have_is_refused_before_compiling(tiny, tmp_path):
    config, _ = tiny
    checkpoint.save_model(VGG19BN(2, 8, rngs=nnx.Rngs(0)), str(tmp_path / "two"), num_classes=2, width_divisor=8)
    bad = config.copy_and_resolve_references()
    bad.model.checkpoint = str(tmp_path / "two")
    bad.methods = ("gradient",)
    bad.target = "ground_truth"
    with pytest.raises(ConfigError, match=r"config.target: ground_truth label \d+ of validation_\d+ is not one of "
                                          r"the model's 2 classes"):
        explain.explain_and_evaluate(bad, str(tmp_path / "w"))


@pytest.mark.parametrize("field,split,message", [
    ("eval_split", "validation[40:50]", "goes beyond the end of its split"),
    ("tune_split", "validation[5:5]", "selects no example"),
])
def test_a_split_without_examples_is_refused_before_the_workdir(tiny, tmp_path, field, split, message):
    config, _ = tiny
    bad = config.copy_and_resolve_references()
    bad.data[field] = split
    where = r"\(clutter_shapes/tiny has 64 examples in train, 32 examples in validation\)"
    with pytest.raises(ConfigError, match=rf"^config.data.{field}: {re.escape(repr(split))} {message} {where}"):
        explain.explain_and_evaluate(bad, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_workdir_of_another_config_is_refused(tiny):
    config, base = tiny
    work = base / "other"
    _run(config, work)
    changed = config.copy_and_resolve_references()
    changed.method.perceptual_ball.lam_perceptual = 5.0
    with pytest.raises(ConfigError, match="method.perceptual_ball"):
        explain.explain_and_evaluate(changed, str(work))


def test_unwritable_workdir_fails_at_start(tiny, tmp_path):
    config, _ = tiny
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot be written"):
        explain.explain_and_evaluate(config, str(blocker / "work"))


def test_missing_or_corrupt_checkpoint_names_path_and_command(tiny, tmp_path):
    config, base = tiny
    missing = config.copy_and_resolve_references()
    missing.model.checkpoint = str(tmp_path / "nowhere")
    with pytest.raises(checkpoint.CheckpointError, match=r"nowhere.*convert_weights"):
        explain.explain_and_evaluate(missing, str(tmp_path / "w1"))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(base / "model", corrupt)
    for root, _, files in os.walk(corrupt / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    bad = config.copy_and_resolve_references()
    bad.model.checkpoint = str(corrupt)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        explain.explain_and_evaluate(bad, str(tmp_path / "w2"))
