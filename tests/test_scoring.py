"""Scoring of stored maps: tuned on one split, reported on the other; failed images; the original-resolution frame
(the explain job's ``scores.score``); the scorer it calls (``eval.scoring.score``) on maps and boxes alone."""

import numpy as np
import pytest

from eval import scoring
from perturb_jax.explain import config as config_lib, scores


def _split(maps, boxes, failed=None, original_size=None, boxes_original=None):
    n = len(maps)
    return {
        "image_id": np.array([f"im{i}" for i in range(n)]), "label": np.zeros(n, np.int32),
        "predicted": np.zeros(n, np.int32), "target": np.zeros(n, np.int32),
        "perceptual_ball/failed": np.zeros(n, bool) if failed is None else np.asarray(failed),
        "perceptual_ball/steps": np.full(n, 3, np.int32), "perceptual_ball/margin": np.ones(n),
        "perceptual_ball/margin_adv": -np.ones(n), "perceptual_ball/loss": np.ones(n),
        "perceptual_ball/saliency": np.stack(maps), "perceptual_ball/batch_seconds": np.array([2.0]),
        "perceptual_ball/batch_images": np.array([n]), "gradient/saliency": np.stack(maps)[:, ::-1],
        "gradient/failed": np.zeros(n, bool), "gradient/batch_seconds": np.array([1.0]),
        "gradient/batch_images": np.array([n]),
        "boxes": [np.asarray(b, np.int32).reshape(-1, 4) for b in boxes],
        "boxes_original": [np.asarray(b, np.int32).reshape(-1, 4) for b in (boxes_original or boxes)],
        "original_size": np.array(original_size or [m.shape for m in maps], np.int32),
        "skipped_id": np.array([], str), "skipped_reason": np.array([], str)}


def _blob(y0, x0, y1, x1, size=16):
    m = np.zeros((size, size), np.float32)
    m[y0:y1 + 1, x0:x1 + 1] = 1.0
    return m


def _config(**protocol):
    c = config_lib.get_config()
    c.protocol.strategies = ("value",)
    c.protocol.value_alphas = (0.5,)
    for k, v in protocol.items():
        c.protocol[k] = v
    return c


def test_errors_counts_and_failed_images():
    tune = _split([_blob(2, 2, 9, 9), _blob(4, 4, 12, 12)], [[2, 2, 9, 9], [4, 4, 12, 12]])
    # eval: image 0 exact (IoU 1), image 1 misses (disjoint), image 2 exact but its optimisation failed.
    evaluation = _split([_blob(0, 0, 5, 5), _blob(0, 0, 3, 3), _blob(8, 8, 15, 15)],
                        [[0, 0, 5, 5], [10, 10, 15, 15], [8, 8, 15, 15]], failed=[False, False, True])
    summary, rows = scores.score(_config(), tune, evaluation)
    assert summary["methods"] == ["perceptual_ball_guided", "gradient"]
    method = summary["localisation_error"]["perceptual_ball_guided"]
    assert method["value"]["tune_error"] == 0.0
    assert method["value"]["eval_error"] == pytest.approx(2 / 3)
    assert summary["failed_images"] == {"perceptual_ball_guided": ["im2"], "gradient": []}
    eval_rows = [r for r in rows if r["split"] == "eval" and r["method"] == "perceptual_ball_guided"]
    assert [r["value_correct"] for r in eval_rows] == [True, False, False]
    assert [r["value_iou"] for r in eval_rows] == [1.0, 0.0, 1.0]
    assert [r["steps"] for r in eval_rows] == [3, 3, 3] and eval_rows[0]["margin_adv"] == -1.0
    # The gradient's maps are the same blobs upside down: every one misses, none failed.
    assert summary["localisation_error"]["gradient"]["value"]["eval_error"] == 1.0
    assert [r["failed"] for r in rows if r["split"] == "eval" and r["method"] == "gradient"] == [False] * 3
    # Seconds per image over both splits: (2 + 2) / 5 and (1 + 1) / 5.
    assert summary["seconds_per_image"] == {"perceptual_ball_guided": pytest.approx(0.8), "gradient": 0.4}
    assert summary["localisation_error"]["whole_image"]["eval_error"] == 1.0  # IoUs 36, 36, 64 / 256


def test_original_resolution_resizes_maps_and_uses_original_boxes():
    # A 16x16 map whose blob covers the left half; the original image is 32 x 8 (H x W).
    m = np.zeros((16, 16), np.float32)
    m[:, :8] = 1.0
    tune = _split([m], [[0, 0, 15, 7]], original_size=[(32, 8)], boxes_original=[[0, 0, 31, 3]])
    evaluation = _split([m], [[0, 0, 15, 7]], original_size=[(32, 8)], boxes_original=[[0, 0, 31, 3]])
    model_frame, _ = scores.score(_config(), tune, evaluation)
    c = _config()
    c.data.eval_resolution = "original"
    original_frame, rows = scores.score(c, tune, evaluation)
    assert model_frame["localisation_error"]["perceptual_ball_guided"]["value"]["eval_error"] == 0.0
    assert original_frame["localisation_error"]["perceptual_ball_guided"]["value"]["eval_error"] == 0.0
    box = [int(v) for v in [r for r in rows if r["method"] == "perceptual_ball_guided"][-1]["value_box"].split()]
    assert box[0] == 0 and box[2] == 31 and box[3] < 8  # a box in the 32 x 8 original's pixels


def test_without_tuning_images_each_strategy_is_scored_at_its_given_alpha():
    """A folder of photos, one annotated: no tuning split, the error at the given alphas on the boxed images."""
    maps = [_blob(0, 0, 5, 5), _blob(0, 0, 3, 3), _blob(8, 8, 15, 15)]
    evaluation = _split(maps, [[0, 0, 5, 5], [], [0, 0, 7, 7]])
    c = _config()
    c.protocol.strategies = ("value", "mean")
    c.protocol.given_alphas.value = 0.5
    summary, rows = scores.score(c, {}, evaluation)
    errors = summary["localisation_error"]["perceptual_ball_guided"]
    # Boxed images 0 (exact) and 2 (disjoint); image 1 has no box and is not scored.
    assert summary["num_images"]["eval_scored"] == 2 and summary["tuned"] is False
    assert errors["value"] == {"alpha": 0.5, "eval_error": 0.5}
    assert errors["mean"] == {"alpha": 1.0, "eval_error": 0.5} and "best" not in errors
    assert "centred_box" not in summary["localisation_error"]
    ious = [r["value_iou"] for r in rows if r["method"] == "perceptual_ball_guided"]
    assert ious == [1.0, None, 0.0]


def test_scorer_on_maps_and_boxes():
    """``eval.scoring`` on the first test's perceptual-ball maps, with no job around them."""
    settings = scoring.Settings.from_config(_config().protocol)
    tune = scoring.Split([_blob(2, 2, 9, 9), _blob(4, 4, 12, 12)],
                         [np.array([[2, 2, 9, 9]]), np.array([[4, 4, 12, 12]])])
    gt = [np.array([[0, 0, 5, 5]]), np.array([[10, 10, 15, 15]]), np.array([[8, 8, 15, 15]])]
    evaluation = scoring.Split([_blob(0, 0, 5, 5), _blob(0, 0, 3, 3), _blob(8, 8, 15, 15)], gt,
                               np.array([False, False, True]))
    result = scoring.score(settings, tune, evaluation)
    assert result["tuned"] and result["best"]["strategy"] == "value"
    assert result["errors"]["value"]["tune_error"] == 0.0
    assert result["errors"]["value"]["eval_error"] == pytest.approx(2 / 3)
    assert result["per_image"]["eval"]["value"]["correct"].tolist() == [True, False, False]
    assert result["per_image"]["eval"]["value"]["iou"].tolist() == [1.0, 0.0, 1.0]
    assert scoring.priors(tune.boxes, [(16, 16)] * 2, gt, [(16, 16)] * 3)["whole_image"]["eval_error"] == 1.0
