"""The ALN's evaluation (aln_jax.evaluate, predict, report) on synthetic maps with known answers, and once end
to end on the tiny clutter_shapes data with numpy stand-ins for the networks."""

import csv
import json
import os

import numpy as np
import pytest
from skimage import io as skio

import eval.datasets
from aln_jax import config as config_lib
from aln_jax import evaluate, predict, report
from eval import boxes


def test_adaptive_threshold_box_by_hand():
    s = np.zeros((6, 6))
    s[1:3, 1:3] = 1.0  # a 2x2 block
    s[3, 3] = 0.8  # touches the block diagonally: same 8-connected component
    s[5, 5] = 0.9  # alone
    s[0, 0] = 0.4  # touches the block diagonally, but under the threshold
    # mean = (4 + 0.8 + 0.9 + 0.4) / 36; threshold = 0.7 * mean + 0.3 * 1 = 0.41861 > 0.4
    assert 0.7 * 6.1 / 36 + 0.3 == pytest.approx(0.418611, abs=1e-6)
    assert boxes.adaptive_threshold_box(s).tolist() == [1, 1, 3, 3]
    assert boxes.adaptive_threshold_box(s, largest_component=False).tolist() == [1, 1, 5, 5]
    # threshold 0.35 keeps the 0.4, which joins the block
    assert boxes.adaptive_threshold_box(s, mean_weight=0.0, max_weight=0.35).tolist() == [0, 0, 3, 3]
    assert boxes.adaptive_threshold_box(np.ones((4, 5))).tolist() == [0, 0, 3, 4]  # constant: the whole image


def _blob(y0, x0, y1, x1, size=16):
    m = np.zeros((size, size), np.float32)
    m[y0:y1 + 1, x0:x1 + 1] = 1.0
    return m


def _split(maps, gt, label, aln_predicted, strong_predicted, prefix="ev"):
    n = len(maps)
    return {"image_id": np.array([f"{prefix}{i}" for i in range(n)]), "label": np.asarray(label, np.int32),
            "boxes": [np.asarray(b, np.int32).reshape(-1, 4) for b in gt], "prob": np.stack(maps),
            "aln_predicted": np.asarray(aln_predicted, np.int32),
            "strong_predicted": np.asarray(strong_predicted, np.int32), "gradient": np.stack(maps),
            "skipped_id": np.array(["bad"]), "skipped_reason": np.array(["unreadable"])}


GT = [[2, 2, 9, 9], [4, 4, 12, 12], [0, 0, 5, 5], [8, 8, 15, 15]]


def _data():
    tune = _split([_blob(*b) for b in GT[:2]], GT[:2], [0, 1], [0, 1], [0, 1], prefix="tu")
    # eval: images 0-2 map exactly onto their box, image 3's blob is in the wrong place.
    maps = [_blob(*b) for b in GT[:3]] + [_blob(0, 0, 4, 4)]
    evaluation = _split(maps, GT, label=[0, 1, 2, 3], aln_predicted=[0, 1, 9, 3], strong_predicted=[9, 9, 2, 3])
    return tune, evaluation


def _config(**eval_fields):
    c = config_lib.get_config("paper,tiny")
    for k, v in eval_fields.items():
        c.eval[k] = v
    return c


def test_score_paper_box_metrics_and_protocol():
    tune, evaluation = _data()
    summary, rows = evaluate.score(_config(), tune, evaluation)
    paper = summary["paper_threshold"]["eval"]
    assert paper["gt_known_accuracy"] == 0.75
    assert paper["top1_accuracy"] == 0.5  # image 2's class is wrong, image 3's box
    assert paper["top1_strong_accuracy"] == 0.25  # only image 2 has the strong class right and a good box
    assert paper["gt_known_error"] == 0.25
    assert summary["paper_threshold"]["tune"]["gt_known_accuracy"] == 1.0
    for method in ("aln", "input_gradient"):
        assert summary["localisation_error"][method]["best"]["eval_accuracy"] == 0.75
    top1 = summary["top1_localisation"]
    assert (top1["aln"]["top1_accuracy"], top1["aln"]["top1_strong_accuracy"]) == (0.5, 0.25)
    assert top1["input_gradient"]["top1_strong_accuracy"] == 0.25 and "top1_accuracy" not in top1["input_gradient"]
    assert summary["whole_image"]["eval_accuracy"] == 0.0  # every box is at most 9x9 of 16x16
    assert summary["skipped_images"][0] == {"split": "tune", "image_id": "bad", "reason": "unreadable"}
    assert [r["method"].split(" (")[0] for r in summary["table"]] == [
        "ALN, paper threshold", "ALN, best tuned strategy", "input gradient of the Metric 2 classifier",
        "centred box", "whole image"]
    eval_rows = [r for r in rows if r["split"] == "eval"]
    assert [r["paper_correct"] for r in eval_rows] == [True, True, True, False]
    assert eval_rows[3]["paper_box"] == "0 0 4 4"
    assert len(rows) == 6 and all(r.keys() == rows[0].keys() for r in rows)


def test_score_without_tuning_split_uses_middle_alphas():
    _, evaluation = _data()
    summary, rows = evaluate.score(_config(), {}, evaluation)
    assert "localisation_error" not in summary
    assert summary["chosen_alpha"] == {"value": 0.5, "mean": 5.0, "energy": 0.5}
    assert [r["method"] for r in summary["table"]][-1] == "whole image"
    assert len(summary["table"]) == 2 and len(rows) == 4


def _compare_file(tmp_path, ids):
    rows = [{"split": "tune", "image_id": "t0", "label": 0, "predicted": 0, "num_gt_boxes": 1,
             "mean_correct": False}]
    # eval: correct boxes on 0, 1, 3; right classes on 0, 2, 3 -> top-1 2/4.
    for i, (correct, predicted) in enumerate([(True, 0), (True, 9), (False, 2), (True, 3)]):
        rows.append({"split": "eval", "image_id": ids[i], "label": i, "predicted": predicted, "num_gt_boxes": 1,
                     "mean_correct": correct})
    summary = {"method": "perceptual_ball_guided", "localisation_error": {"perceptual_ball_guided": {
        "best": {"strategy": "mean", "alpha": 2.0, "eval_error": 0.25, "num_eval": 4}}}}
    path = tmp_path / f"results_{ids[0]}.json"
    path.write_text(json.dumps({"summary": summary, "per_image": rows}))
    return str(path)


def test_compare_rows_from_results_json(tmp_path):
    tune, evaluation = _data()
    same = _compare_file(tmp_path, ["ev3", "ev2", "ev1", "ev0"])  # order does not matter
    other = _compare_file(tmp_path, ["ev0", "ev1", "ev2", "x9"])
    summary, _ = evaluate.score(_config(), tune, evaluation, (same, other))
    a, b = summary["compare"]
    assert (a["method"], a["gt_known_accuracy"], a["top1_accuracy"], a["same_images"]) == (
        "perceptual_ball_guided", 0.75, 0.5, True)
    assert "NOT THE SAME IMAGES" not in a["note"]
    assert not b["same_images"] and "NOT THE SAME IMAGES (4 theirs, 4 ours, 3 in common)" in b["note"]
    assert [r["method"] for r in summary["table"]].count("perceptual_ball_guided") == 2


def test_missing_compare_file_names_the_field(tmp_path):
    tune, evaluation = _data()
    with pytest.raises(FileNotFoundError, match="config.eval.compare_results: .*nope.json does not exist"):
        evaluate.score(_config(), tune, evaluation, (str(tmp_path / "nope.json"),))


def _examples(n, size=8, bad=()):
    out = []
    for i in range(n):
        if i in bad:
            out.append({"image_id": f"im{i}", "error": "cannot decode"})
            continue
        image = np.full((size, size, 3), i, np.uint8)
        out.append({"image": image, "label": i % 3, "boxes": np.array([[0, 0, i % size, i % size]], np.int32),
                    "image_id": f"im{i}"})
    return out


class _Fake:
    """numpy stand-ins for the ALN (maps at half the image size) and the strong classifier; records batch sizes."""

    def __init__(self):
        self.sizes = []

    def predict(self, images):
        self.sizes.append(len(images))
        prob = (images[:, ::2, ::2, 0] / 255.0).astype(np.float32)
        logits = np.eye(3, dtype=np.float32)[images[:, 0, 0, 0] % 3]
        return {"prob": prob, "logits": logits, "masked": images[:, ::2, ::2]}

    def strong(self, images):
        return {"predicted": images[:, 0, 0, 0].astype(np.int64) % 2,
                "gradient": images[..., 0].astype(np.float32)}


def test_predict_split_pads_the_last_batch_and_drops_padding():
    fake = _Fake()
    out = predict.predict_split(iter(_examples(6, bad=(4,))), fake.predict, fake.strong, batch_size=2,
                                 num_figures=3)
    assert fake.sizes == [2, 2, 2]  # 5 readable images: the last batch padded with its last image
    assert out["image_id"].tolist() == ["im0", "im1", "im2", "im3", "im5"]
    assert out["position"].tolist() == [0, 1, 2, 3, 5]
    assert out["prob"].shape == (5, 8, 8) and out["prob_small"].shape == (3, 4, 4)
    assert out["prob"][4] == pytest.approx(np.full((8, 8), 5 / 255))  # resized with boxes.resize_map
    assert out["aln_predicted"].tolist() == [0, 1, 2, 0, 2] and out["strong_predicted"].tolist() == [0, 1, 0, 1, 1]
    assert out["gradient"].shape == (5, 8, 8) and out["images"].shape == (3, 8, 8, 3)
    assert out["masked"].shape == (3, 4, 4, 3) and len(out["boxes"]) == 5
    assert (out["skipped_id"].tolist(), out["skipped_reason"].tolist(), out["skipped_position"].tolist()) == (
        ["im4"], ["cannot decode"], [4])


def _assert_splits_equal(a, b, skip=("predict_seconds",)):
    assert a.keys() == b.keys()
    for key in a:
        if key == "boxes":
            assert len(a[key]) == len(b[key]) and all(np.array_equal(x, y) for x, y in zip(a[key], b[key]))
        elif key not in skip:
            assert np.array_equal(a[key], b[key]), key


def test_gather_one_process_is_identity_and_shares_merge_in_order():
    fake = _Fake()
    examples = _examples(9, bad=(2, 7))
    whole = predict.predict_split(iter(examples), fake.predict, fake.strong, 2, num_figures=4)
    _assert_splits_equal(predict.gather(whole), whole, skip=())
    shares = [predict.predict_split(predict.process_share(iter(examples), p, 3), fake.predict, fake.strong, 2, 4)
              for p in range(3)]
    assert [s["image_id"].tolist() for s in shares] == [["im0", "im3", "im6"], ["im1", "im4"], ["im5", "im8"]]
    merged = predict.merge_shares(shares)
    for key in predict.FIGURE_KEYS:  # every share's first figures, in order: the split's first 4 lead
        merged[key] = merged[key][:4]
    _assert_splits_equal(merged, whole)
    assert merged["predict_seconds"].shape == (3,)


def test_write_report_files_and_figure_size(tmp_path):
    tune, evaluation = _data()
    config = _config(num_figures=3)
    evaluation.update(images=np.zeros((4, 16, 16, 3), np.uint8), masked=np.zeros((4, 8, 8, 3), np.uint8),
                      prob_small=evaluation["prob"][:, ::2, ::2])
    summary, rows = evaluate.score(config, tune, evaluation)
    report.write_report(str(tmp_path), config, summary, rows, evaluation)
    table = (tmp_path / "table.md").read_text()
    assert "| ALN, paper threshold (Sec. 3.2: 0.7 mean + 0.3 max) | 0.750 | 0.500 | 0.250 |" in table
    assert "| whole image | 0.000 |  |  |  | 4 |" in table
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["paper_threshold"]["eval"][
        "top1_accuracy"] == 0.5
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    # 3 rows of 4 tiles of 16 px, 2 px apart, upscaled 12x; 4 px after each row and a 16 px header.
    assert skio.imread(tmp_path / "figure.png").shape[:2] == (16 + 3 * (16 * 12 + 4), (4 * 16 + 6) * 12 + 4)


def test_ablation_figure_size(tmp_path):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    maps = np.random.default_rng(0).random((2, 8, 8))
    report.ablation_figure(str(tmp_path / "ablation.png"), images, maps, maps[::-1])
    assert skio.imread(tmp_path / "ablation.png").shape[:2] == (16 + 2 * (32 * 6 + 4), (3 * 32 + 4) * 6 + 4)


def test_evaluate_end_to_end_on_tiny_clutter_shapes(tmp_path):
    config = config_lib.get_config("paper,tiny")
    examples, _ = eval.datasets.load(config.data, config.data.eval_split)
    truth = list(examples)
    by_image = {ex["image"].tobytes(): ex for ex in truth}

    def predict_fn(images):  # an oracle ALN at 16x16: the true box, its class right
        exs = [by_image.get(im.tobytes(), truth[0]) for im in images]
        prob = np.stack([_blob(*ex["boxes"][0], size=32)[::2, ::2] for ex in exs])
        return {"prob": prob, "logits": np.eye(10, dtype=np.float32)[[ex["label"] for ex in exs]],
                "masked": images[:, ::2, ::2]}

    def strong_fn(images):
        return {"predicted": np.zeros(len(images), np.int64), "gradient": images.mean(-1).astype(np.float32)}

    summary = evaluate.evaluate(config, str(tmp_path), predict_fn, strong_fn)
    assert summary["num_images"] == {"tune": 8, "tune_scored": 8, "eval": 16, "eval_scored": 16}
    assert summary["paper_threshold"]["eval"]["top1_accuracy"] > 0.8  # halving the maps may cost a pixel
    assert summary["ms_per_image"] > 0
    out = tmp_path / "eval"
    assert sorted(os.listdir(out)) == ["figure.png", "results.csv", "results.json", "table.md"]
    assert skio.imread(out / "figure.png").shape[:2] == (16 + 4 * (192 + 4), (4 * 32 + 6) * 6 + 4)
    ids = [r["image_id"] for r in json.loads((out / "results.json").read_text())["per_image"] if r["split"] == "eval"]
    assert ids == [ex["image_id"] for ex in truth]


def test_centred_box_iou_by_hand():
    centred = [5, 5, 14, 14]  # side 0.5 of a 20x20 image: rows and columns 5-14
    assert evaluate.centred_box_iou(np.array([centred, [0, 0, 4, 4]]), [(20, 20)] * 2, 0.5) == 0.5  # 1 and 0
    # rows 5-14, columns 10-19: 50 of the 100 + 100 - 50 pixels
    assert abs(evaluate.centred_box_iou(np.array([[5, 10, 14, 19]]), [(20, 20)], 0.5) - 50 / 150) < 1e-12
    two = [np.array([[0, 0, 4, 4], centred])]  # an image with two true boxes: the better one counts
    assert evaluate.centred_box_iou(two, [(20, 20)], 0.5) == 1.0
