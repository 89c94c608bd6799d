"""The ImageNet job end to end: ``configs/guided.py:imagenet`` on a miniature ILSVRC tree with a converted
random-weight VGG19_bn, from a ``.pth`` (torch) or an ``.npz`` state_dict (no torch; marked slow where torch is
installed, as it then repeats the ``.pth`` run).

Ground-truth boxes, IoUs, tuned thresholds and errors are recomputed here by hand from the XML numbers and the
stored maps, not with the job's scoring code.
"""

import csv
import importlib.util
import json
import os
import runpy
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ilsvrc_fixtures import add, encode_pixels, random_state_dict, stem, voc
from torch_fixtures import random_torch_model
from PIL import Image

from eval import boxes as box_ops
from eval.datasets import ilsvrc
from perturb_jax.runtime import checkpoint, convert_weights
from perturb_jax.explain import job as explain
from perturb_jax import methods

GUIDED = Path(__file__).resolve().parents[1] / "configs" / "guided.py"
HAS_TORCH = importlib.util.find_spec("torch") is not None
WIDTH_DIVISOR = 16
METHODS = ("perceptual_ball", "gradient")  # the guided config's
STRATEGIES = ("value", "mean", "energy")  # the config's order, which breaks ties between strategies

# TFDS's validation_labels.txt: the synset of each file, in file-name order; labels are indices in labels.txt.
SYNSETS = {1: "n01751748", 2: "n09193705", 3: "n02105855", 4: "n04263257", 5: "n03125729", 6: "n01735189",
           7: "n02346627", 8: "n02776631"}
LABELS = {1: 65, 2: 970, 3: 230, 4: 809, 5: 516, 6: 57, 7: 334, 8: 415}
# file number -> (height, width, VOC objects (synset, xmin, ymin, xmax, ymax), 1-based inclusive).
IMAGES = {
    1: (60, 80, [(SYNSETS[1], 9, 5, 56, 40)]),
    2: (90, 50, [(SYNSETS[2], 1, 1, 25, 45), (SYNSETS[2], 20, 40, 50, 90)]),
    3: (64, 64, [(SYNSETS[3], 1, 1, 64, 64)]),
    4: (75, 100, [(SYNSETS[4], 31, 11, 70, 60)]),
    5: (48, 120, [(SYNSETS[5], 1, 1, 60, 48), (SYNSETS[5], 75, 10, 110, 30), ("n01440764", 2, 2, 5, 5)]),
    6: (100, 70, [(SYNSETS[6], 11, 21, 60, 95)]),
    7: (56, 56, [(SYNSETS[7], 5, 9, 12, 16)]),
    8: (50, 50, [(SYNSETS[8], 1, 1, 50, 50)]),  # its JPEG is corrupt
}
CORRUPT = 8
TUNE, EVAL = (1, 2, 3), (4, 5, 6, 7)  # validation[:3] and validation[3:8] less the corrupt file

# Squash to 224 x 224: rows scale by s = 224 / H, columns by 224 / W. The 1-based inclusive VOC extent [min, max]
# is the continuous 0-based extent [min - 1, max); its edges scale and round half up, and the inclusive end is one
# less: min' = round((min - 1) * s), max' = round(max * s) - 1. Boxes are (ymin, xmin, ymax, xmax).
GT = {
    # 60 x 80, s = 3.733 / 2.8: y round(4 * 3.733 = 14.93) = 15, round(40 * 3.733 = 149.33) - 1 = 148;
    # x round(8 * 2.8 = 22.4) = 22, round(56 * 2.8 = 156.8) - 1 = 156.
    1: [(15, 22, 148, 156)],
    # 90 x 50, s = 2.489 / 4.48: y 0, round(45 * 2.489 = 112) - 1 = 111; x 0, round(25 * 4.48 = 112) - 1 = 111;
    # y round(39 * 2.489 = 97.07) = 97, round(90 * 2.489 = 224) - 1 = 223; x round(19 * 4.48 = 85.12) = 85, 223.
    2: [(0, 0, 111, 111), (97, 85, 223, 223)],
    # 64 x 64, the whole image.
    3: [(0, 0, 223, 223)],
    # 75 x 100, s = 2.987 / 2.24: y round(10 * 2.987 = 29.87) = 30, round(60 * 2.987 = 179.2) - 1 = 178;
    # x round(30 * 2.24 = 67.2) = 67, round(70 * 2.24 = 156.8) - 1 = 156.
    4: [(30, 67, 178, 156)],
    # 48 x 120, s = 4.667 / 1.867: y 0, round(48 * 4.667 = 224) - 1 = 223; x 0, round(60 * 1.867 = 112) - 1 = 111;
    # y round(9 * 4.667 = 42) = 42, round(30 * 4.667 = 140) - 1 = 139; x round(74 * 1.867 = 138.13) = 138,
    # round(110 * 1.867 = 205.33) - 1 = 204. The n01440764 box is of another class: dropped.
    5: [(0, 0, 223, 111), (42, 138, 139, 204)],
    # 100 x 70, s = 2.24 / 3.2: y round(20 * 2.24 = 44.8) = 45, round(95 * 2.24 = 212.8) - 1 = 212;
    # x round(10 * 3.2 = 32) = 32, round(60 * 3.2 = 192) - 1 = 191.
    6: [(45, 32, 212, 191)],
    # 56 x 56, s = 4: y 8 * 4 = 32, 16 * 4 - 1 = 63; x 4 * 4 = 16, 12 * 4 - 1 = 47.
    7: [(32, 16, 63, 47)],
}
# The whole 224 x 224 image (area 50176) as the box: IoU = area of the best ground-truth box / 50176.
# 4: 149 * 90 / 50176 = 0.267 (miss); 5: 224 * 112 / 50176 = 0.5 (hit, IoU >= 0.5); 6: 168 * 160 / 50176 = 0.536
# (hit); 7: 32 * 32 / 50176 = 0.02 (miss).
WHOLE_IMAGE_ERROR = 0.5
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def voc_iou(a, b) -> float:
    """IoU of two inclusive (ymin, xmin, ymax, xmax) boxes, areas counted in pixels: (max - min + 1) per side."""
    inter_h = min(a[2], b[2]) - max(a[0], b[0]) + 1
    inter_w = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(inter_h, 0) * max(inter_w, 0)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def best_voc_iou(box, k) -> float:
    return max(voc_iou([int(v) for v in box], gt) for gt in GT[k])


def picture(height, width, objects) -> np.ndarray:
    """A gradient background with each object box filled by diagonal stripes."""
    y, x = np.mgrid[:height, :width]
    image = np.stack([40 + 150 * y / height, 60 + 120 * x / width, np.full((height, width), 90.0)], axis=-1)
    for _, xmin, ymin, xmax, ymax in objects:
        stripes = ((y + x) // 3 % 2)[ymin - 1:ymax, xmin - 1:xmax, None]
        image[ymin - 1:ymax, xmin - 1:xmax] = np.where(stripes, (230, 200, 30), (120, 20, 160))
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """manual/ILSVRC2012_img_val.tar (members not in name order, as the real tar) and ILSVRC2012_bbox_val_v3.tgz."""
    root = tmp_path_factory.mktemp("imagenet")
    (root / "manual").mkdir()
    with tarfile.open(root / "manual" / ilsvrc.VAL_TAR, "w") as tar:
        for k in (5, 2, 8, 7, 1, 4, 3, 6):
            h, w, objects = IMAGES[k]
            add(tar, stem(k) + ".JPEG", b"\xff\xd8\xff\xe0 truncated" if k == CORRUPT else
                encode_pixels(picture(h, w, objects)))
    with tarfile.open(root / "ILSVRC2012_bbox_val_v3.tgz", "w:gz") as tar:
        for k, (_, _, objects) in IMAGES.items():
            add(tar, f"val/{stem(k)}.xml", voc(objects, stem(k)).encode())
    return root


@pytest.fixture(scope="module")
def npz_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("npz_weights")
    np.savez(root / "vgg19_bn.npz", **random_state_dict())
    convert_weights.convert_file(str(root / "vgg19_bn.npz"), str(root / "ckpt"))
    return root / "ckpt"


@pytest.fixture(scope="module", params=["pth", pytest.param("npz", marks=[pytest.mark.slow] if HAS_TORCH else [])])
def converted(request, tmp_path_factory):
    """(checkpoint directory, the torch model it was converted from, or None for the .npz)."""
    if request.param == "npz":
        return request.getfixturevalue("npz_checkpoint"), None
    torch = pytest.importorskip("torch")
    model = random_torch_model(1000, WIDTH_DIVISOR)
    root = tmp_path_factory.mktemp("pth_weights")
    torch.save(model.state_dict(), root / "vgg19_bn.pth")
    convert_weights.convert_file(str(root / "vgg19_bn.pth"), str(root / "ckpt"))
    return root / "ckpt", model


def imagenet_config(tree, checkpoint_dir):
    """``configs/guided.py:imagenet`` as the CLI builds it (locked), with the overrides a user would pass."""
    config = runpy.run_path(str(GUIDED))["get_config"]("imagenet")
    config.lock()
    assert (config.data.name, config.data.image_size, config.data.resize) == ("imagenet2012", 224, "squash")
    assert config.data.eval_split == "validation[:1000]" and config.data.order == "file_name"  # Table 1
    assert tuple(config.protocol.strategies) == STRATEGIES
    config.data.manual_dir = str(tree / "manual")
    config.data.boxes = str(tree / "ILSVRC2012_bbox_val_v3.tgz")
    config.model.checkpoint = str(checkpoint_dir)
    config.data.tune_split, config.data.eval_split = "validation[:3]", "validation[3:8]"
    config.batch_size = 2  # 3 tuning images: the second batch is padded
    config.method.perceptual_ball.max_steps = 3
    config.num_figures = 2
    return config


def stored(workdir, split) -> dict:
    """The batch files of a split read with numpy alone, concatenated in file order (boxes: a list per image); each
    method's files under ``method/key``."""
    parts = [dict(np.load(p)) for p in sorted((Path(workdir) / "maps").glob(f"{split}_*.npz"))]
    for method in METHODS:
        parts += [{f"{method}/{k}": v for k, v in np.load(p).items()}
                  for p in sorted((Path(workdir) / "maps" / method).glob(f"{split}_*.npz"))]
    boxes = ("boxes", "boxes_original")  # padded with -1 rows to the most boxes of a batch
    out = {k: np.concatenate([p[k] for p in parts if k in p])
           for k in dict.fromkeys(k for p in parts for k in p) if k not in boxes}
    for k in boxes:
        out[k] = [b[b[:, 0] >= 0].tolist() for p in parts if k in p for b in p[k]]
    return out


def model_inputs(config) -> np.ndarray:
    """The readable tuning then evaluation images, normalised here with ImageNet's mean and std."""
    images = np.stack([ex["image"] for split in (config.data.tune_split, config.data.eval_split)
                       for ex in ilsvrc.load(config.data, split)[0] if "image" in ex])
    return (images.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)


def localised(maps, ids, failed, strategy, alphas) -> np.ndarray:
    """(images, alphas): the box of the thresholded map has IoU >= 0.5 and the optimisation did not fail."""
    return np.array([[best_voc_iou(box, k) >= 0.5 and not f for box in box_ops.saliency_boxes(m, strategy, alphas)]
                     for m, k, f in zip(maps, ids, failed)])


def hand_tuning(tune, evaluation, method, alphas) -> dict:
    """Per strategy: the first alpha of best tuning accuracy, that accuracy, and the evaluation error there."""
    out = {}
    key, failed = f"{method}/saliency", f"{method}/failed"
    for s in STRATEGIES:
        accuracy = localised(tune[key], TUNE, tune[failed], s, alphas[s]).mean(axis=0)
        index = int(np.argmax(accuracy))  # the first of the best
        eval_hits = localised(evaluation[key], EVAL, evaluation[failed], s, alphas[s])[:, index]
        out[s] = {"alpha": alphas[s][index], "tune_accuracy": accuracy[index], "eval_error": 1 - eval_hits.mean()}
    return out


def run_and_check(config, workdir) -> dict:
    """Runs the job once and checks every stored and reported number; returns results.json."""
    explain.explain_and_evaluate(config, str(workdir))
    batches = ["eval_00000.npz", "eval_00001.npz", "eval_00002.npz", "tune_00000.npz", "tune_00001.npz"]
    assert sorted(os.listdir(workdir / "maps")) == batches[:3] + sorted(METHODS) + batches[3:]
    tune, evaluation = stored(workdir, "tune"), stored(workdir, "eval")
    # eval batches: [4, 5], [6, 7], then one of only the corrupt file 8.
    assert set(np.load(workdir / "maps" / "eval_00002.npz").files) == {"skipped_id", "skipped_reason"}
    for split, ids in ((tune, TUNE), (evaluation, EVAL)):
        assert split["image_id"].tolist() == [stem(k) + ".JPEG" for k in ids]
        assert split["label"].tolist() == [LABELS[k] for k in ids]
        for m in METHODS:
            assert split[f"{m}/saliency"].shape == (len(ids), 224, 224)
            assert np.all(np.isfinite(split[f"{m}/saliency"])) and split[f"{m}/saliency"].min() >= 0
        assert split["boxes"] == [[list(b) for b in GT[k]] for k in ids]
        # Original pixels: the XML numbers less one, boxes of the image's class only.
        assert split["boxes_original"] == [[[y0 - 1, x0 - 1, y1 - 1, x1 - 1] for s, x0, y0, x1, y1 in IMAGES[k][2]
                                            if s == SYNSETS[k]] for k in ids]
        assert [tuple(s) for s in split["original_size"]] == [IMAGES[k][:2] for k in ids]
    assert evaluation["skipped_id"].tolist() == [stem(CORRUPT) + ".JPEG"]
    figure_images = [ex["image"] for ex in ilsvrc.load(config.data, "validation[3:5]")[0]]
    np.testing.assert_array_equal(evaluation["images"], figure_images)  # num_figures = 2

    with open(workdir / "results.json") as f:
        results = json.load(f)
    summary, rows = results["summary"], results["per_image"]
    method = "perceptual_ball_guided"
    assert summary["methods"] == [method, "gradient"]
    assert summary["num_images"] == {"tune": 3, "tune_scored": 3, "eval": 4, "eval_scored": 4}
    [skipped] = summary["skipped_images"]
    assert skipped["image_id"] == stem(CORRUPT) + ".JPEG"
    assert skipped["reason"].startswith(f"cannot decode {stem(CORRUPT)}.JPEG in {config.data.manual_dir}")
    assert summary["failed_images"] == {method: [], "gradient": []}

    logits = np.asarray(checkpoint.load_model(config.model.checkpoint)(model_inputs(config))[0])
    predicted = logits.argmax(1)
    ids = TUNE + EVAL
    assert [(r["split"], r["method"], r["image_id"]) for r in results["per_image"]] == [
        (split, label, stem(k) + ".JPEG") for split, keys in (("tune", TUNE), ("eval", EVAL))
        for label in (method, "gradient") for k in keys]
    rows = [r for r in rows if r["method"] == method]
    assert [r["label"] for r in rows] == [LABELS[k] for k in ids]
    assert [r["predicted"] for r in rows] == predicted.tolist()
    assert [r["target"] for r in rows] == predicted.tolist()  # config.target = 'predicted'
    runner_up = np.sort(logits, axis=1)[:, -2]
    assert [r["margin"] for r in rows] == pytest.approx(logits.max(1) - runner_up, abs=1e-5)  # C_t - max_j C_j
    assert [r["num_gt_boxes"] for r in rows] == [1, 2, 1, 1, 2, 1, 1]
    assert all(1 <= r["steps"] <= 3 for r in rows)
    right = predicted == [LABELS[k] for k in ids]
    assert summary["classifier_accuracy"] == pytest.approx({"tune": right[:3].mean(), "eval": right[3:].mean()})

    alphas = {s: list(config.protocol[f"{s}_alphas"]) for s in STRATEGIES}
    maps = list(tune["perceptual_ball/saliency"]) + list(evaluation["perceptual_ball/saliency"])
    ious = []
    for row, k, saliency in zip(rows, ids, maps):
        for s in STRATEGIES:
            box = box_ops.saliency_boxes(saliency, s, summary["chosen_alpha"][method][s], largest_component=True)[0]
            assert row[f"{s}_box"] == " ".join(str(v) for v in box)
            iou = best_voc_iou(box, k)
            assert row[f"{s}_iou"] == round(iou, 4)
            assert row[f"{s}_correct"] == (iou >= 0.5 and not row["failed"])
            ious.append(iou)
    assert min(ious) < 0.5 <= max(ious)  # both outcomes occur: the checks above are not vacuous

    errors = summary["localisation_error"]
    for key, label in (("perceptual_ball", method), ("gradient", "gradient")):
        hand = hand_tuning(tune, evaluation, key, alphas)
        for s in STRATEGIES:
            assert errors[label][s]["alpha"] == hand[s]["alpha"]
            assert errors[label][s]["tune_accuracy"] == pytest.approx(hand[s]["tune_accuracy"])
            assert errors[label][s]["eval_error"] == pytest.approx(hand[s]["eval_error"])
            assert errors[label][s]["num_tune"] == 3 and errors[label][s]["num_eval"] == 4
        best = max(STRATEGIES, key=lambda s: (hand[s]["tune_accuracy"], -STRATEGIES.index(s)))
        assert errors[label]["best"]["strategy"] == best
    assert summary["chosen_alpha"][method] == {s: errors[method][s]["alpha"] for s in STRATEGIES}
    for s in STRATEGIES:  # the eval error is the fraction of evaluation rows with IoU < 0.5 at the tuned alpha
        assert errors[method][s]["eval_error"] == pytest.approx(np.mean([not r[f"{s}_correct"] for r in rows[3:]]))
    assert errors["whole_image"]["eval_error"] == WHOLE_IMAGE_ERROR

    with open(workdir / "results.csv", newline="") as f:
        pb_rows = [r for r in csv.DictReader(f) if r["method"] == method]
        assert pb_rows == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]
    table = (workdir / "table.md").read_text()
    assert "on 4 evaluation images" in table and "3 tuning images" in table
    assert f"| {method} | {errors[method]['value']['eval_error']:.3f}" in table
    with Image.open(workdir / "figure.png") as figure:
        # A 16 px header, then a row per image (2) of [image | 2 px | map | 2 px | map] and 4 px gaps.
        assert figure.size == (3 * 224 + 2 * 2 + 4, 16 + 2 * (224 + 4))
    return results


def test_imagenet_job(tree, converted, tmp_path):
    checkpoint_dir, torch_model = converted
    config = imagenet_config(tree, checkpoint_dir)
    work = tmp_path / "work"
    rows = [r for r in run_and_check(config, work)["per_image"] if r["method"] == "perceptual_ball_guided"]
    if torch_model is not None:
        import torch

        # The checkpoint is the torch model: on the same inputs it predicts the same class by the same margin.
        with torch.no_grad():
            logits = torch_model(torch.from_numpy(model_inputs(config).transpose(0, 3, 1, 2))).numpy()
        assert logits.argmax(1).tolist() == [r["predicted"] for r in rows]
        top2 = np.sort(logits, axis=1)[:, -2:]
        assert [r["margin"] for r in rows] == pytest.approx(top2[:, 1] - top2[:, 0], abs=1e-4)

    first = (work / "results.json").read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (work / "maps").iterdir()}

    explain.explain_and_evaluate(config, str(work))  # every batch is stored: nothing is explained again
    assert (work / "results.json").read_bytes() == first
    assert {p.name: p.stat().st_mtime_ns for p in (work / "maps").iterdir()} == mtimes

    batch = work / "maps" / "eval_00000.npz"
    before = dict(np.load(batch))
    batch.unlink()
    explain.explain_and_evaluate(config, str(work))  # only that batch is explained again
    after = dict(np.load(batch))
    assert sorted(after) == sorted(before)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert (work / "results.json").read_bytes() == first


def constant_make_fn(name, graphdef, options):
    """Stands in for ``methods.make_fn``: constant maps, no optimisation, little to compile."""
    return jax.jit(lambda state, images, targets, key: {"saliency": jnp.ones(images.shape[:3], jnp.float32)})


@pytest.mark.parametrize("eval_split, num_figures", [("validation[3:8]", 0), ("validation[7:8]", 2)])
def test_figure_images_optional(tree, npz_checkpoint, tmp_path, monkeypatch, eval_split, num_figures):
    """No figure asked for, or a first evaluation batch of only unreadable images: the job stores no images."""
    monkeypatch.setattr(methods, "make_fn", constant_make_fn)
    config = imagenet_config(tree, npz_checkpoint)
    config.data.eval_split, config.num_figures = eval_split, num_figures
    summary = explain.explain_and_evaluate(config, str(tmp_path / "work"))
    assert "images" not in np.load(tmp_path / "work" / "maps" / "eval_00000.npz")
    assert [s["image_id"] for s in summary["skipped_images"]] == [stem(CORRUPT) + ".JPEG"]
    assert not (tmp_path / "work" / "figure.png").exists()


def test_missing_tar_is_named(tree, npz_checkpoint, tmp_path):
    config = imagenet_config(tree, npz_checkpoint)
    config.data.manual_dir = str(tmp_path / "manual")
    (tmp_path / "manual").mkdir()
    with pytest.raises(FileNotFoundError, match="ImageNet validation tar not found") as err:
        explain.explain_and_evaluate(config, str(tmp_path / "work"))
    assert str(tmp_path / "manual" / "ILSVRC2012_img_val.tar") in str(err.value)
    assert "manual_dir" in str(err.value)


def test_missing_checkpoint_says_how_to_convert(tree, tmp_path):
    config = imagenet_config(tree, tmp_path / "vgg19_bn_flax")
    with pytest.raises(checkpoint.CheckpointError) as err:
        explain.explain_and_evaluate(config, str(tmp_path / "work"))
    message = str(err.value)
    assert str(tmp_path / "vgg19_bn_flax") in message
    assert "python -m perturb_jax.runtime.convert_weights --torch_checkpoint=vgg19_bn-c79401a0.pth" in message
