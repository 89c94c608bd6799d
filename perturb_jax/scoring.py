"""Scores stored maps with the weak-localisation protocol of ``eval.protocol`` (tuned on one split, reported on the
other) and gathers the per-image results."""

import ml_collections
import numpy as np

from eval import boxes as box_ops
from eval import protocol


def method_name(config: ml_collections.ConfigDict) -> str:
    return "perceptual_ball_" + ("guided" if config.saliency.guided else "unguided")


def _frame(split: dict, key: str, config) -> tuple[list, list, list]:
    """Maps, ground-truth boxes and image sizes in the evaluation frame (model input or original resolution)."""
    maps = list(split[key])
    if config.data.eval_resolution == "original":
        sizes = [tuple(int(v) for v in s) for s in split["original_size"]]
        return [box_ops.resize_map(m, s) for m, s in zip(maps, sizes)], split["boxes_original"], sizes
    return maps, split["boxes"], [m.shape for m in maps]


def _scored(split: dict) -> np.ndarray:
    return np.array([len(b) > 0 for b in split.get("boxes", [])], bool)


def _sweep(split, key, config, alphas):
    maps, gt, _ = _frame(split, key, config)
    keep = _scored(split)
    success = protocol.sweep([m for m, k in zip(maps, keep) if k], [b for b, k in zip(gt, keep) if k],
                             tuple(config.protocol.strategies), config.protocol.largest_component, alphas)
    failed = split["failed"][keep]
    return {s: v & ~failed[:, None] for s, v in success.items()}  # a failed optimisation is a localisation failure.


def score(config: ml_collections.ConfigDict, tune: dict, evaluation: dict) -> tuple[dict, list[dict]]:
    """Returns the summary (errors per method and strategy, baselines, MaxBoxAcc, counts) and per-image rows."""
    alphas = {s: np.asarray(config.protocol[f"{s}_alphas"], float) for s in config.protocol.strategies}
    name = method_name(config)
    splits = {"tune": tune, "eval": evaluation}
    summary = {"method": name, "num_images": {}, "failed_images": [], "skipped_images": []}
    for split_name, split in splits.items():
        ids = split.get("image_id", np.zeros(0, str))
        summary["num_images"][split_name] = len(ids)
        summary["num_images"][f"{split_name}_scored"] = int(_scored(split).sum())
        summary["skipped_images"] += [{"image_id": str(i), "reason": str(r)} for i, r in
                                      zip(split.get("skipped_id", []), split.get("skipped_reason", []))]
        if not len(ids):
            continue
        summary["failed_images"] += [str(i) for i in ids[split["failed"]]]
        labelled = split["label"] >= 0
        summary.setdefault("classifier_accuracy", {})[split_name] = (
            float((split["predicted"][labelled] == split["label"][labelled]).mean()) if labelled.any() else None)
        summary.setdefault("adversarial_success", {})[split_name] = float((split["margin_adv"] <= 0).mean())
        summary.setdefault("mean_steps", {})[split_name] = float(split["steps"].mean())

    chosen = {}
    if summary["num_images"]["tune_scored"] and summary["num_images"]["eval_scored"]:
        errors, max_box = {}, {}
        for key, label in (("saliency", name), ("gradient", "input_gradient")):
            errors[label] = protocol.tune_and_evaluate(_sweep(tune, key, config, alphas),
                                                       _sweep(evaluation, key, config, alphas), alphas)
            maps, gt, _ = _frame(evaluation, key, config)
            keep = _scored(evaluation)
            max_box[label] = protocol.max_box_acc([m for m, k in zip(maps, keep) if k],
                                                  [b for b, k in zip(gt, keep) if k],
                                                  interval=config.protocol.max_box_acc_interval)
        tune_frame, eval_frame = _frame(tune, "saliency", config), _frame(evaluation, "saliency", config)
        keep_t, keep_e = _scored(tune), _scored(evaluation)
        errors["centred_box"] = protocol.centred_box_baseline(
            [b for b, k in zip(tune_frame[1], keep_t) if k], [s for s, k in zip(tune_frame[2], keep_t) if k],
            [b for b, k in zip(eval_frame[1], keep_e) if k], [s for s, k in zip(eval_frame[2], keep_e) if k])
        errors["whole_image"] = {"eval_error": protocol.whole_image_error(
            [b for b, k in zip(eval_frame[1], keep_e) if k], [s for s, k in zip(eval_frame[2], keep_e) if k])}
        summary["localisation_error"] = errors
        summary["max_box_acc"] = {m: {str(k): v for k, v in r.items()} for m, r in max_box.items()}
        chosen = {s: errors[name][s]["alpha"] for s in config.protocol.strategies}
    else:
        # Without boxes on both splits no threshold can be tuned: boxes use the middle of each sweep.
        chosen = {s: float(alphas[s][len(alphas[s]) // 2]) for s in config.protocol.strategies}
    summary["chosen_alpha"] = chosen
    return summary, _per_image_rows(config, splits, chosen)


def _per_image_rows(config, splits: dict, chosen: dict) -> list[dict]:
    rows = []
    for split_name, split in splits.items():
        if not len(split.get("image_id", [])):
            continue
        maps, gt, _ = _frame(split, "saliency", config)
        per = protocol.per_image_results(maps, gt, chosen, config.protocol.largest_component)
        for i, image_id in enumerate(split["image_id"]):
            row = {"split": split_name, "image_id": str(image_id), "label": int(split["label"][i]),
                   "predicted": int(split["predicted"][i]), "target": int(split["target"][i]),
                   "failed": bool(split["failed"][i]), "steps": int(split["steps"][i]),
                   "margin": float(split["margin"][i]), "margin_adv": float(split["margin_adv"][i]),
                   "loss": float(split["loss"][i]), "num_gt_boxes": len(gt[i])}
            for s, r in per.items():
                row[f"{s}_box"] = " ".join(str(int(v)) for v in r["box"][i])
                row[f"{s}_iou"] = None if np.isnan(r["iou"][i]) else round(float(r["iou"][i]), 4)
                row[f"{s}_correct"] = bool(r["correct"][i]) and not row["failed"]
            rows.append(row)
    return rows
