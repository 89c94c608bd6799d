"""The explain job's summary and per-image rows: each method's stored maps, in the evaluation frame (the model's
input, or the original image with ``data.eval_resolution = "original"``), scored by ``eval.scoring.score`` (Fong &
Vedaldi 2017; MaxBoxAcc of wsolevaluation), with failed and skipped images, the classifier's accuracy, seconds per
image and each method's diagnostics."""

import ml_collections
import numpy as np

from eval import boxes as box_ops
from eval import scoring
from perturb_jax import methods
from perturb_jax.explain.report import method_label


def _frame(split: dict, key: str, eval_resolution: str) -> tuple[list, list, list]:
    """Maps, ground-truth boxes and image sizes in the evaluation frame (model input or original resolution). A
    map is scored by its positive part: every method's map is non-negative but occlusion's, whose negative pixels
    are those whose occlusion raised the class score (evidence against, not for, the object)."""
    maps = [np.maximum(m, 0) for m in split[key]]
    if eval_resolution == "original":
        sizes = [tuple(int(v) for v in s) for s in split["original_size"]]
        return [box_ops.resize_map(m, s) for m, s in zip(maps, sizes)], split["boxes_original"], sizes
    return maps, split["boxes"], [m.shape for m in maps]


def _seconds_per_image(split: dict, method: str) -> tuple[float, int]:
    seconds = split.get(f"{method}/batch_seconds", np.zeros(0))
    images = split.get(f"{method}/batch_images", np.zeros(0))
    return float(np.sum(seconds)), int(np.sum(images))


def method_summary(method: str, splits: dict) -> dict:
    """``summary[method]``: the method's own figures (``Method.summarise`` of its per-image diagnostics), per split
    with images, as ``<figure>_<split>``."""
    prefix = f"{method}/"
    summarise = methods.get(method).summarise
    return {f"{k}_{split_name}": v for split_name, split in splits.items() if len(split.get("image_id", []))
            for k, v in summarise({key[len(prefix):]: a for key, a in split.items()
                                   if key.startswith(prefix)}).items()}


def score(config: ml_collections.ConfigDict, tune: dict, evaluation: dict) -> tuple[dict, list[dict]]:
    """Returns the summary (errors per method and strategy, priors, MaxBoxAcc, seconds per image, counts) and the
    per-image rows (one per split, method and image) of the stored splits (``results_store.read_split``)."""
    settings = scoring.Settings.from_config(config.protocol)
    labels = {m: method_label(config, m) for m in config.methods}
    splits = {"tune": tune, "eval": evaluation}
    # Each method's maps in the evaluation frame, made once (resizing to the original size is not free).
    frames = {(name, m): _frame(split, f"{m}/saliency", config.data.eval_resolution) for name, split in splits.items()
              if len(split.get("image_id", [])) for m in config.methods}
    summary = {"methods": list(labels.values()), "num_images": {}, "failed_images": {},
               "skipped_images": [], "seconds_per_image": {}}
    for split_name, split in splits.items():
        ids = split.get("image_id", np.zeros(0, str))
        summary["num_images"][split_name] = len(ids)
        summary["num_images"][f"{split_name}_scored"] = int(scoring.scored(split.get("boxes", [])).sum())
        summary["skipped_images"] += [{"image_id": str(i), "reason": str(r)} for i, r in
                                      zip(split.get("skipped_id", []), split.get("skipped_reason", []))]
        if not len(ids):
            continue
        for m, label in labels.items():
            summary["failed_images"].setdefault(label, []).extend(str(i) for i in ids[split[f"{m}/failed"]])
        labelled = split["label"] >= 0
        summary.setdefault("classifier_accuracy", {})[split_name] = (
            float((split["predicted"][labelled] == split["label"][labelled]).mean()) if labelled.any() else None)
    for m, label in labels.items():
        totals = [_seconds_per_image(split, m) for split in splits.values()]
        seconds, images = sum(t[0] for t in totals), sum(t[1] for t in totals)
        summary["seconds_per_image"][label] = seconds / images if images else None
    for m in config.methods:
        if methods.get(m).summarise and f"{m}/saliency" in evaluation and (figures := method_summary(m, splits)):
            summary[m] = figures

    def scoring_split(name: str, m: str) -> scoring.Split:
        if (name, m) not in frames:
            return scoring.Split([], [])
        maps, gt, _ = frames[name, m]
        return scoring.Split(maps, gt, splits[name][f"{m}/failed"])

    results = {m: scoring.score(settings, scoring_split("tune", m), scoring_split("eval", m)) for m in config.methods}
    if summary["num_images"]["eval_scored"]:
        first = config.methods[0]  # the boxes and sizes are every method's
        tune_frame = frames.get(("tune", first), ([], [], []))
        summary["max_box_acc"] = {labels[m]: results[m]["max_box_acc"] for m in config.methods}
        summary["localisation_error"] = {
            **{labels[m]: results[m]["errors"] for m in config.methods},
            **scoring.priors(tune_frame[1], tune_frame[2], frames["eval", first][1], frames["eval", first][2])}
        summary["tuned"] = summary["num_images"]["tune_scored"] > 0
    summary["chosen_alpha"] = {labels[m]: results[m]["chosen_alpha"] for m in config.methods}
    return summary, _per_image_rows(splits, frames, labels, results)


def _per_image_rows(splits: dict, frames: dict, labels: dict, results: dict) -> list[dict]:
    rows = []
    for split_name, split in splits.items():
        if not len(split.get("image_id", [])):
            continue
        for m, label in labels.items():
            gt = frames[split_name, m][1]
            per = results[m]["per_image"][split_name]
            extras = [k.split("/", 1)[1] for k in split if k.startswith(f"{m}/")]
            extras = [k for k in extras if k not in ("saliency", "failed") and not k.startswith("batch_")]
            for i, image_id in enumerate(split["image_id"]):
                row = {"split": split_name, "method": label, "image_id": str(image_id),
                       "label": int(split["label"][i]), "predicted": int(split["predicted"][i]),
                       "target": int(split["target"][i]), "failed": bool(split[f"{m}/failed"][i]),
                       "num_gt_boxes": len(gt[i])}
                row.update({k: _scalar(split[f"{m}/{k}"][i]) for k in extras})
                for s, r in per.items():
                    row[f"{s}_box"] = " ".join(str(int(v)) for v in r["box"][i])
                    row[f"{s}_iou"] = None if np.isnan(r["iou"][i]) else round(float(r["iou"][i]), 4)
                    row[f"{s}_correct"] = bool(r["correct"][i])  # never for a failed map (the scorer's)
                rows.append(row)
    return rows


def _scalar(value):
    """A per-image diagnostic as a JSON value (a vector, e.g. extremal perturbation's areas, as a list)."""
    value = np.asarray(value)
    if value.ndim:
        return [round(float(v), 6) for v in value.ravel()]
    return bool(value) if value.dtype == bool else int(value) if value.dtype.kind in "iu" else float(value)
