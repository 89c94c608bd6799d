"""Scores stored maps with the weak-localisation protocol of ``eval.protocol``: every method of ``config.methods``
tuned on one split and reported on the other, the priors (centred box, whole image), MaxBoxAcc, seconds per image,
and the per-image rows. Without tuning images, each strategy is reported at its given alpha
(``config.protocol.given_alphas``)."""

import ml_collections
import numpy as np

from eval import boxes as box_ops
from eval import protocol
from eval.errors import ConfigError

STRATEGIES = ("value", "mean", "energy")  # the order of the tables


def method_label(config: ml_collections.ConfigDict, method: str) -> str:
    """The method's name in the table (the perceptual ball says which variant)."""
    if method == "perceptual_ball":
        return "perceptual_ball_" + ("guided" if config.method.perceptual_ball.guided else "unguided")
    return method


def _frame(split: dict, key: str, config) -> tuple[list, list, list]:
    """Maps, ground-truth boxes and image sizes in the evaluation frame (model input or original resolution). A
    map is scored by its positive part: every method's map is non-negative but occlusion's, whose negative pixels
    are those whose occlusion raised the class score (evidence against, not for, the object)."""
    maps = [np.maximum(m, 0) for m in split[key]]
    if config.data.eval_resolution == "original":
        sizes = [tuple(int(v) for v in s) for s in split["original_size"]]
        return [box_ops.resize_map(m, s) for m, s in zip(maps, sizes)], split["boxes_original"], sizes
    return maps, split["boxes"], [m.shape for m in maps]


def _scored(split: dict) -> np.ndarray:
    return np.array([len(b) > 0 for b in split.get("boxes", [])], bool)


def _kept(items, keep):
    return [x for x, k in zip(items, keep) if k]


def _sweep(split, frame, method, config, alphas):
    maps, gt, _ = frame
    keep = _scored(split)
    success = protocol.sweep(_kept(maps, keep), _kept(gt, keep), tuple(config.protocol.strategies),
                             config.protocol.largest_component, alphas)
    failed = split[f"{method}/failed"][keep]
    return {s: v & ~failed[:, None] for s, v in success.items()}  # a failed map is a localisation failure.


def _seconds_per_image(split: dict, method: str) -> tuple[float, int]:
    seconds = split.get(f"{method}/batch_seconds", np.zeros(0))
    images = split.get(f"{method}/batch_images", np.zeros(0))
    return float(np.sum(seconds)), int(np.sum(images))


def score(config: ml_collections.ConfigDict, tune: dict, evaluation: dict) -> tuple[dict, list[dict]]:
    """Returns the summary (errors per method and strategy, priors, MaxBoxAcc, seconds per image, counts) and the
    per-image rows (one per split, method and image)."""
    strategies = tuple(config.protocol.strategies)
    alphas = {s: np.asarray(config.protocol[f"{s}_alphas"], float) for s in strategies}
    labels = {m: method_label(config, m) for m in config.methods}
    splits = {"tune": tune, "eval": evaluation}
    # Each method's maps in the evaluation frame, made once (resizing to the original size is not free).
    frames = {(name, m): _frame(split, f"{m}/saliency", config) for name, split in splits.items()
              if len(split.get("image_id", [])) for m in config.methods}
    summary = {"methods": list(labels.values()), "num_images": {}, "failed_images": {},
               "skipped_images": [], "seconds_per_image": {}}
    for split_name, split in splits.items():
        ids = split.get("image_id", np.zeros(0, str))
        summary["num_images"][split_name] = len(ids)
        summary["num_images"][f"{split_name}_scored"] = int(_scored(split).sum())
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
    if "perceptual_ball/margin_adv" in evaluation:
        summary["perceptual_ball"] = {
            f"{k}_{split_name}": float(np.mean(v)) for split_name, split in splits.items()
            if len(split.get("image_id", [])) for k, v in
            (("adversarial_success", split["perceptual_ball/margin_adv"] <= 0),
             ("mean_steps", split["perceptual_ball/steps"]))}

    tuned = summary["num_images"]["tune_scored"] > 0
    errors, chosen = {}, {}
    if summary["num_images"]["eval_scored"]:
        keep_e = _scored(evaluation)
        eval_frame = frames["eval", config.methods[0]]
        for m, label in labels.items():
            if tuned:
                errors[label] = protocol.tune_and_evaluate(_sweep(tune, frames["tune", m], m, config, alphas),
                                                           _sweep(evaluation, frames["eval", m], m, config, alphas),
                                                           alphas)
            else:
                given = {s: np.asarray([config.protocol.given_alphas[s]], float) for s in strategies}
                success = _sweep(evaluation, frames["eval", m], m, config, given)
                errors[label] = {s: {"alpha": float(given[s][0]), "eval_error": float(1 - success[s][:, 0].mean())}
                                 for s in strategies}
            maps, gt, _ = frames["eval", m]
            summary.setdefault("max_box_acc", {})[label] = {
                str(k): v for k, v in protocol.max_box_acc(_kept(maps, keep_e), _kept(gt, keep_e),
                                                           interval=config.protocol.max_box_acc_interval).items()}
            chosen[label] = {s: errors[label][s]["alpha"] for s in strategies}
        if tuned:
            keep_t = _scored(tune)
            tune_frame = frames["tune", config.methods[0]]
            errors["centred_box"] = protocol.centred_box_baseline(
                _kept(tune_frame[1], keep_t), _kept(tune_frame[2], keep_t), _kept(eval_frame[1], keep_e),
                _kept(eval_frame[2], keep_e))
        errors["whole_image"] = {"eval_error": protocol.whole_image_error(_kept(eval_frame[1], keep_e),
                                                                          _kept(eval_frame[2], keep_e))}
        summary["localisation_error"] = errors
        summary["tuned"] = tuned
    for label in labels.values():  # without boxes to score, boxes are drawn at the given alphas
        chosen.setdefault(label, {s: float(config.protocol.given_alphas[s]) for s in strategies})
    summary["chosen_alpha"] = chosen
    return summary, _per_image_rows(config, splits, frames, labels, chosen)


def _per_image_rows(config, splits: dict, frames: dict, labels: dict, chosen: dict) -> list[dict]:
    rows = []
    for split_name, split in splits.items():
        if not len(split.get("image_id", [])):
            continue
        for m, label in labels.items():
            maps, gt, _ = frames[split_name, m]
            per = protocol.per_image_results(maps, gt, chosen[label], config.protocol.largest_component)
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
                    row[f"{s}_correct"] = bool(r["correct"][i]) and not row["failed"]
                rows.append(row)
    return rows


def _scalar(value):
    """A per-image diagnostic as a JSON value (a vector, e.g. extremal perturbation's areas, as a list)."""
    value = np.asarray(value)
    if value.ndim:
        return [round(float(v), 6) for v in value.ravel()]
    return bool(value) if value.dtype == bool else int(value) if value.dtype.kind in "iu" else float(value)


def protocol_config() -> ml_collections.ConfigDict:
    """The ``protocol`` group both jobs score with (``score``'s settings)."""
    p = ml_collections.ConfigDict()
    p.strategies = STRATEGIES
    p.largest_component = True  # paper Sec. 3; False boxes every kept pixel (Fong & Vedaldi).
    p.value_alphas = tuple(np.round(np.arange(0, 0.951, 0.05), 2).tolist())
    p.energy_alphas = tuple(np.round(np.arange(0, 0.951, 0.05), 2).tolist())
    p.mean_alphas = tuple(np.round(np.arange(0, 10.01, 0.5), 2).tolist())
    p.max_box_acc_interval = 0.01  # wsolevaluation's cam_curve_interval.
    # Without tuning images (a folder of photos) each strategy is reported at these (our choice).
    p.given_alphas = ml_collections.ConfigDict({"value": 0.5, "mean": 1.0, "energy": 0.5})
    return p


def _fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def check_protocol(pr: ml_collections.ConfigDict) -> None:
    """Checks the ``protocol`` group; a bad value raises a one-line ``ConfigError`` naming the field."""
    if not pr.strategies or any(s not in STRATEGIES for s in pr.strategies):
        _fail("protocol.strategies", f"must be a non-empty subset of {STRATEGIES}, got {tuple(pr.strategies)}")
    for strategy, upper in (("value", 1.0), ("energy", 1.0), ("mean", None)):
        alphas = tuple(pr[f"{strategy}_alphas"])
        if not alphas or any(not a >= 0 or (upper is not None and a > upper) for a in alphas):
            bound = f"in [0, {upper}]" if upper is not None else ">= 0"
            _fail(f"protocol.{strategy}_alphas", f"every alpha must be {bound}, got {alphas}")
    if not 0 < pr.max_box_acc_interval < 1:
        _fail("protocol.max_box_acc_interval", f"must be in (0, 1), got {pr.max_box_acc_interval}")
