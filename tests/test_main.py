"""The main job end to end on the tiny embedded split: outputs, resumption, and bad input."""

import json
import os
import runpy
import shutil

import numpy as np
import pytest
from flax import nnx

from eval import boxes as box_ops
from perturb_jax import checkpoint, explain, results_store
from perturb_jax.config import ConfigError
from perturb_jax.models.vgg import VGG19BN

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
    assert [r["split"] for r in rows] == ["tune"] * 6 + ["eval"] * 10
    assert [r["image_id"] for r in rows][:2] == ["validation_00000", "validation_00001"]
    for name in ("results.csv", "table.md", "figure.png"):
        assert (work / name).stat().st_size > 0
    # Batches of 4: tune 4 + 2, eval 4 + 4 + 2.
    assert sorted(os.listdir(work / "maps")) == ["eval_00000.npz", "eval_00001.npz", "eval_00002.npz",
                                                 "tune_00000.npz", "tune_00001.npz"]
    # Each reported box is the stored map's box at the tuned alpha; its IoU is the VOC +1 IoU with the truth.
    stored = results_store.read_split(str(work), "eval")
    alphas = summary["chosen_alpha"]
    for i, row in enumerate(r for r in rows if r["split"] == "eval"):
        for strategy, alpha in alphas.items():
            box = box_ops.saliency_boxes(stored["saliency"][i], strategy, [alpha])[0]
            assert row[f"{strategy}_box"] == " ".join(str(int(v)) for v in box)
            (y0, x0, y1, x1), (g0, h0, g1, h1) = box, stored["boxes"][i][0]
            inter = max(0, min(y1, g1) - max(y0, g0) + 1) * max(0, min(x1, h1) - max(x0, h0) + 1)
            union = (y1 - y0 + 1) * (x1 - x0 + 1) + (g1 - g0 + 1) * (h1 - h0 + 1) - inter
            assert row[f"{strategy}_iou"] == pytest.approx(inter / union, abs=1e-4)
    best = summary["localisation_error"][summary["method"]]["best"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert best["eval_error"] == pytest.approx(1 - np.mean([r[f"{best['strategy']}_correct"] for r in eval_rows]))
    assert summary["localisation_error"]["whole_image"]["eval_error"] == 1.0  # objects cover < 50% of the image

    # A second run on the same workdir computes nothing and writes the same numbers.
    stamp = os.path.getmtime(work / "maps" / "eval_00001.npz")
    assert _run(config, work) == first
    assert os.path.getmtime(work / "maps" / "eval_00001.npz") == stamp
    # An interrupted run (a batch missing) recomputes that batch only, with identical numbers.
    os.remove(work / "maps" / "eval_00001.npz")
    assert _run(config, work) == first


def test_workdir_of_another_config_is_refused(tiny):
    config, base = tiny
    work = base / "other"
    _run(config, work)
    changed = config.copy_and_resolve_references()
    changed.perturb.lam_perceptual = 5.0
    with pytest.raises(ConfigError, match="perturb.lam_perceptual"):
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
