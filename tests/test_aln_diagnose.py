"""The ALN diagnostic (aln_jax/diagnose.py): the oracle masks of a hand-made segmentation, a classifier whose answer is
known (its label logit is the brightness of one region: occluding that region is the objective's minimum), the three
verdicts, and one run on the tiny data with the shipped VGG19_bn."""

import dataclasses
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from aln_jax import config as config_lib, step as step_lib, train
from aln_jax.experiments import diagnose
from perturb_jax.runtime import workdir as workdir_lib
from eval.errors import ConfigError
from perturb_jax.runtime.checkpoint import EMBEDDED as EMBEDDED_CHECKPOINT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _grid(n: int, side: int, cell: int) -> np.ndarray:
    """(n, side, side) segment ids: square cells of ``cell`` pixels numbered in raster order."""
    cells = side // cell
    ids = np.arange(side)[:, None] // cell * cells + np.arange(side)[None, :] // cell
    return np.broadcast_to(ids, (n, side, side)).astype(np.int32)


def _ids(decisions: np.ndarray) -> set:
    return set(np.flatnonzero(decisions).tolist())


def test_oracle_masks_of_a_hand_made_segmentation():
    segments = _grid(1, 8, 2)  # 16 cells of 2x2 pixels, 4 per row; ids 16-19 are empty
    obj = np.zeros((1, 8, 8), bool)
    obj[0, 0:3, 0:3] = True  # cells 0 (4/4), 1 and 4 (2/4 each), 5 (1/4)
    boxes = [np.array([[0, 0, 3, 5]])]  # rows 0-3, columns 0-5: cells 0-2 and 4-6
    d = diagnose.oracle_masks(segments, obj, boxes, 20)
    assert list(d) == ["none", "object", "touching", "box", "centred square"]
    assert all(v.shape == (1, 20) and v.dtype == np.float32 for v in d.values())
    assert _ids(d["none"]) == set()
    assert _ids(d["object"]) == {0, 1, 4}
    assert _ids(d["touching"]) == {0, 1, 4, 5}
    assert _ids(d["box"]) == {0, 1, 2, 4, 5, 6}
    assert _ids(d["centred square"]) == {5, 6, 9}  # the object's 9 pixels: rows and columns 2-4
    without_masks = diagnose.oracle_masks(segments, None, boxes, 20)
    assert list(without_masks) == ["none", "box", "centred square"]
    # the boxes' 24 pixels: a square of side 5 at rows and columns 1-5
    assert _ids(without_masks["centred square"]) == {1, 2, 4, 5, 6, 8, 9, 10}
    assert list(diagnose.oracle_masks(segments, None, None, 20)) == ["none"]


def _region_classifier(params, x):
    """Two logits: w x the mean of rows 0-7, columns 8-15 (the object), and 0. Occluding exactly those pixels
    (fill 0) leaves no evidence for either class."""
    top = params["w"] * jnp.mean(x[:, 0:8, 8:16], axis=(1, 2, 3))
    return jnp.stack([top, jnp.zeros_like(top)], -1)


def _settings(objective: str) -> step_lib.Settings:
    s = step_lib.Settings.from_config(config_lib.get_config("tiny"))
    return dataclasses.replace(s, num_segments=16, objective=objective, fill="constant", fill_value=0.0,
                               mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.mark.parametrize("objective", ["confusion", "preserve_destroy"])
def test_the_object_is_the_minimum_and_the_optimum_finds_it(objective):
    n, lam = 3, 1.0
    images = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (100, 128, 160)])
    images[:, 0:8, 8:16] = 255  # normalised 2.0: the label logit is 4 x 2 = 8 on the clean image
    obj = np.zeros((n, 16, 16), bool)
    obj[:, 0:8, 8:16] = True
    segments, boxes, labels = _grid(n, 16, 4), [np.array([[0, 8, 7, 15]])] * n, np.zeros(n, np.int32)
    params, s = {"w": jnp.float32(4.0)}, _settings(objective)
    masks = diagnose.oracle_masks(segments, obj, boxes, 16)
    masks["away"] = np.zeros((n, 16), np.float32)
    masks["away"][:, [8, 9, 12, 13]] = 1  # the bottom-left quarter: the object's area, none of its pixels
    logits = diagnose.optimise_masks(_region_classifier, params, images, labels, segments, np.zeros((n, 16)), s, lam,
                                     steps=60, batch_size=2)
    masks["optimum from nothing"] = (logits >= 0).astype(np.float32)
    np.testing.assert_array_equal(masks["optimum from nothing"], masks["object"])
    rows = {k: diagnose.evaluate_masks(_region_classifier, params, images, labels, segments, v, s, lam, boxes,
                                       batch_size=2) for k, v in masks.items()}
    total = {k: r["total"] for k, r in rows.items()}
    assert total["object"] < min(total["centred square"], total["none"], total["away"])
    assert total["away"] > total["none"]  # the same classifier output as occluding nothing, plus the area
    assert rows["none"]["confusion"] == pytest.approx(8.0) and rows["none"]["accuracy"] == 1.0
    assert rows["object"]["confusion"] == pytest.approx(0.0, abs=1e-6)
    assert rows["object"]["area"] == pytest.approx(0.25) and rows["centred square"]["area"] == pytest.approx(0.25)
    assert rows["object"]["gt_known"] == rows["optimum from nothing"]["gt_known"] == 1.0
    assert rows["centred square"]["gt_known"] == rows["away"]["gt_known"] == 0.0
    assert rows["optimum from nothing"]["total"] == pytest.approx(total["object"])
    assert "objective misses" not in diagnose.verdict(rows, 10)
    whole = diagnose.evaluate_masks(_region_classifier, params, images, labels, segments, masks["centred square"], s,
                                    lam, boxes)  # one batch: the same numbers as batches of 2 (the last padded)
    for key in ("objective", "area", "iou"):
        assert whole["per_image"][key] == pytest.approx(rows["centred square"]["per_image"][key])


def _row(total, area=0.2, gt_known=0.5, accuracy=0.5):
    return dict(objective=total - area, confusion=1.0, accuracy=accuracy, area=area, total=total, gt_known=gt_known)


def test_verdict_gives_each_answer_from_the_numbers():
    rows = {"none": _row(2.0, 0.0, None), "object": _row(1.0), "centred square": _row(1.5),
            "optimum from nothing": _row(0.7, 0.45, 0.1), "network": _row(1.05)}
    text = diagnose.verdict(rows, 10)
    assert text.startswith("The objective misses the object: its minimum is elsewhere")
    assert "45.0%" in text and "GT-known 0.100" in text
    rows["optimum from nothing"] = _row(0.7, 0.45, 0.4)  # lower, but its boxes localise nearly as well: the object
    assert diagnose.verdict(rows, 10).startswith("The objective and the network agree on the object")
    rows["optimum from nothing"] = _row(1.0)  # the optimiser found the object itself: a tie is not a miss
    assert diagnose.verdict(rows, 10).startswith("The objective and the network agree on the object")
    rows["touching"] = _row(0.8, 0.3, 0.8)  # hides the object's slivers too: the oracle now, below the optimum
    rows["optimum from nothing"] = _row(0.9, 0.25, 0.6)  # below the object mask, above the touching one
    text = diagnose.verdict(rows, 10)
    assert text.startswith("The objective and the network agree on the object") and "touching oracle 0.800" in text
    rows["optimum from nothing"] = _row(1.0)
    del rows["touching"]
    rows["network"] = _row(1.6)  # keeps 40% of the object's advantage over occluding nothing
    assert diagnose.verdict(rows, 10).startswith("The learning misses the object: the objective prefers it but the "
                                             "network does not find it")
    del rows["network"]
    assert "no corruption network" in diagnose.verdict(rows, 10)
    del rows["object"]  # without masks the box oracle is the reference
    rows["box"] = _row(0.5)
    assert "box oracle 0.500" in diagnose.verdict(rows, 10) and "not converged" not in diagnose.verdict(rows, 10)
    rows["optimum from nothing"] = _row(2.5)  # worse than occluding nothing (2.0)
    assert "has not converged: raise --steps" in diagnose.verdict(rows, 10)
    del rows["optimum from nothing"]  # --steps=0: the network alone is judged against the oracle
    assert diagnose.verdict(rows, 10).startswith("No verdict: neither a per-image optimum")
    rows["network"] = _row(0.6)
    assert diagnose.verdict(rows, 10).startswith("The network reaches the object's value; the objective's minimum was "
                                             "not searched")
    rows["network"] = _row(1.5)
    assert diagnose.verdict(rows, 10).startswith("The learning misses the object")
    rows["none"] = _row(2.0, 0.0, None, accuracy=0.15)  # 1.5x chance of 10 classes: a collapsed classifier
    assert diagnose.verdict(rows, 10).startswith("No verdict: the classifier is at chance")
    assert "accuracy 0.150, chance 0.100" in diagnose.verdict(rows, 10)
    assert diagnose.verdict(rows, 100).startswith("The learning misses the object")  # 15x the chance of 100 classes


def test_run_on_the_tiny_data_with_a_classifier_checkpoint(tmp_path):
    config = config_lib.get_config("tiny")
    out = str(tmp_path / "diagnose")
    result = diagnose.run(config, classifier=EMBEDDED_CHECKPOINT, num_images=3, steps=2, out=out)
    names = ["none", "object", "touching", "box", "centred square", "optimum from nothing", "optimum from the object"]
    assert list(result["rows"]) == names and result["num_images"] == 3 and result["directory"] == out
    assert result["lambda_reg"] == config.train.lambda_reg and result["rows"]["none"]["gt_known"] is None
    with open(os.path.join(out, "table.md")) as f:
        table = f.read()
    assert all(f"\n| {name} | " in table for name in names) and result["verdict"] in table
    with open(os.path.join(out, "diagnose.json")) as f:
        stored = json.load(f)
    assert stored["verdict"] == result["verdict"] and len(stored["rows"]["object"]["per_image"]["iou"]) == 3


def test_bad_arguments_fail_in_one_line(tmp_path):
    config = config_lib.get_config("tiny")
    with pytest.raises(ConfigError, match="--workdir / --classifier: give exactly one"):
        diagnose.run(config)
    with pytest.raises(ConfigError, match="--steps: must be >= 0"):
        diagnose.run(config, classifier=EMBEDDED_CHECKPOINT, steps=-1)
    trained = config_lib.get_config("tiny")
    trained.aln.bottleneck = 8
    workdir_lib.check_fingerprint(trained, str(tmp_path), train._NOT_IN_FINGERPRINT, write=True)
    with pytest.raises(ConfigError, match="holds a run with another config .differs in aln.bottleneck"):
        diagnose.run(config, workdir=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "aln_jax.experiments.diagnose", "--config=configs/aln.py:tiny",
                           f"--workdir={tmp_path}", "--out=/tmp/x"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and last.startswith("error: --out: with --workdir the results go to"), proc.stderr
