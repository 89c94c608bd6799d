"""Evaluation of the Adversarial Localization Network: boxes from its occlusion maps, scored beside the baselines.

``evaluate(config, workdir, predict_fn, strong_fn)`` predicts both splits (``aln_jax.predict``: each process its
share, gathered), scores them on process 0 (``score``) and writes ``workdir/eval/`` (``aln_jax.report``):
``table.md``, ``results.json``, ``results.csv`` and ``figure.png`` (paper Figure 2). Two box rules are scored on the
occlusion probability map:
  - the paper's (Sec. 3.2): pixels >= 0.7 mean + 0.3 max, box of the largest connected component, no tuning;
  - the project's protocol (``eval.scoring.score``, the explain job's too: Fong & Vedaldi 2017's three strategies,
    alpha tuned on the tuning split and reported on the evaluation split; MaxBoxAcc, wsolevaluation, Choe et al.
    2020), for the ALN's map and the stronger classifier's input gradient.
Each box rule is reported as GT-known localisation accuracy (best IoU >= 0.5 with a true box) and top-1
localisation (that and the class right; Sec. 3.1: Metric 1 with the ALN's own classifier, Metric 2 with the
stronger classifier). Maps and boxes are scored at ``data.image_size``; accuracies are fractions (higher is better).
"""

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

import eval.datasets
from aln_jax import predict, report
from eval import boxes as box_ops
from eval import protocol
from eval import scoring
from perturb_jax.runtime import distributed

METHOD = "aln"
GRADIENT = "input_gradient"


def _maps(split: dict, key: str) -> scoring.Split:
    return scoring.Split(list(split.get(key, ())), split.get("boxes", []))


def _with_errors(accuracies: dict) -> dict:
    """``accuracies`` plus, for each ``*_accuracy`` that is known, its ``*_error`` = 1 - accuracy."""
    errors = {k.replace("_accuracy", "_error"): 1.0 - v for k, v in accuracies.items()
              if k.endswith("_accuracy") and v is not None}
    return {**accuracies, **errors}


def localisation_accuracies(correct: np.ndarray, split: dict, keep: np.ndarray) -> dict:
    """GT-known, top-1 (Metric 1: the ALN's class) and top-1 (Metric 2: the stronger classifier's class)
    localisation accuracy (Sec. 3.1) of per-image box successes ``correct`` over the scored images ``keep``.

    An unknown label (-1) never counts as a right class.
    """
    correct = np.asarray(correct, bool)
    label = split["label"][keep]
    return _with_errors({"gt_known_accuracy": float(correct.mean()),
                         "top1_accuracy": float((correct & (split["aln_predicted"][keep] == label)).mean()),
                         "top1_strong_accuracy": float((correct & (split["strong_predicted"][keep] == label)).mean()),
                         "num_images": int(keep.sum())})


def paper_boxes(maps) -> np.ndarray:
    """The Sec. 3.2 box (``boxes.adaptive_threshold_box``) of each map, int32 (N, 4)."""
    return np.array([box_ops.adaptive_threshold_box(m) for m in maps], np.int32).reshape(-1, 4)


def _best_ious(predicted: np.ndarray, gt_boxes: list) -> np.ndarray:
    return np.array([box_ops.best_iou(b, g) for b, g in zip(predicted, gt_boxes)], np.float64)


def centred_box_iou(predicted, sizes: list, fraction: float) -> float:
    """Mean over images of the best IoU of an image's box(es) (4,) or (n, 4) with the centred box of side
    ``fraction`` (``boxes.centred_box``): near 1 when the maps are one prior rather than a function of the image;
    the true boxes' figure is the reference."""
    return float(np.mean([np.max(box_ops.iou(np.reshape(b, (-1, 4)), box_ops.centred_box(size, fraction)[None]))
                          for b, size in zip(predicted, sizes)]))


def _read_compare(path: str) -> dict:
    """A ``perturb_jax.main`` results.json; a missing or unscored file is a one-line error naming the field."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.eval.compare_results: {path} does not exist; give results.json files "
                                "written by python -m perturb_jax.main")
    with open(path) as f:
        data = json.load(f)
    try:
        method = data["summary"]["method"]
        data["summary"]["localisation_error"][method]["best"]["strategy"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"config.eval.compare_results: {path} holds no tuned localisation error of "
                         f"perturb_jax.main (missing {e}); it needs a run with boxes on both splits") from e
    return data


def compare_row(path: str, image_ids) -> dict:
    """Table row of a perceptual-ball run: GT-known accuracy of its best strategy (chosen on its tuning split) and
    top-1 localisation with its own classifier (that strategy's box right and its predicted == label), over its
    scored evaluation images; ``same_images`` says whether its evaluation image ids equal ``image_ids``."""
    data = _read_compare(path)
    method = data["summary"]["method"]
    best = data["summary"]["localisation_error"][method]["best"]
    strategy = best["strategy"]
    rows = [r for r in data["per_image"] if r["split"] == "eval"]
    scored = [r for r in rows if r["num_gt_boxes"] > 0]
    top1 = float(np.mean([bool(r[f"{strategy}_correct"]) and r["predicted"] == r["label"] for r in scored])
                 ) if scored else None
    theirs, ours = sorted(str(r["image_id"]) for r in rows), sorted(str(i) for i in image_ids)
    same = theirs == ours
    note = f"{path}: {strategy}, α={best['alpha']:g}"
    if not same:
        common = len(set(theirs) & set(ours))
        note += f"; NOT THE SAME IMAGES ({len(theirs)} theirs, {len(ours)} ours, {common} in common)"
    return _table_row(method, note, best["num_eval"], gt_known_accuracy=1.0 - best["eval_error"],
                      top1_accuracy=top1, same_images=same, path=path)


def _table_row(method: str, note: str, num_images, gt_known_accuracy=None, top1_accuracy=None,
               top1_strong_accuracy=None, max_box_acc=None, **extra) -> dict:
    return _with_errors({"method": method, "note": note, "gt_known_accuracy": gt_known_accuracy,
                         "top1_accuracy": top1_accuracy, "top1_strong_accuracy": top1_strong_accuracy,
                         "max_box_acc_mean": max_box_acc, "num_images": num_images, **extra})


def _box_cells(boxes: np.ndarray, ious: np.ndarray, i: int, prefix: str) -> dict:
    return {f"{prefix}_box": " ".join(str(int(v)) for v in boxes[i]),
            f"{prefix}_iou": None if np.isnan(ious[i]) else round(float(ious[i]), 4),
            f"{prefix}_correct": bool(ious[i] >= protocol.IOU_THRESHOLD)}


def score(config: ml_collections.ConfigDict, tune: dict, evaluation: dict, compare_results=()) -> tuple[dict, list]:
    """Scores gathered ``predict_split`` outputs (``tune`` may be empty); returns (summary, per-image rows).

    summary: num_images, skipped_images, classifier_accuracy {split: {aln, strong}}, paper_threshold {split:
    accuracies}, chosen_alpha; with boxes on the evaluation split, max_box_acc {aln, input_gradient} and
    whole_image {eval_accuracy, eval_error}; with boxes on both splits, localisation_error (``eval.scoring.score``
    of aln and input_gradient, and ``eval.scoring.priors``' centred_box) and top1_localisation {aln,
    input_gradient} at the best strategy's alpha; compare (one row per ``compare_results`` file); table (the rows
    of table.md). Without a tuning split each strategy uses the middle alpha of its sweep.
    """
    settings = scoring.Settings.from_config(config.protocol)
    settings = dataclasses.replace(settings, given_alphas={s: a[len(a) // 2] for s, a in settings.alphas.items()})
    splits = {"tune": tune, "eval": evaluation}
    summary = {"method": METHOD, "num_images": {}, "skipped_images": [], "classifier_accuracy": {},
               "paper_threshold": {}}
    keep, paper = {}, {}
    for name, split in splits.items():
        n = len(split.get("image_id", ()))
        keep[name] = scoring.scored(split.get("boxes", []))
        summary["num_images"][name] = n
        summary["num_images"][f"{name}_scored"] = int(keep[name].sum())
        summary["skipped_images"] += [{"split": name, "image_id": str(i), "reason": str(r)} for i, r in
                                      zip(split.get("skipped_id", []), split.get("skipped_reason", []))]
        if not n:
            continue
        labelled = split["label"] >= 0
        summary["classifier_accuracy"][name] = {
            who: float((split[f"{who}_predicted"][labelled] == split["label"][labelled]).mean())
            if labelled.any() else None for who in ("aln", "strong")}
        predicted = paper_boxes(split["prob"])
        paper[name] = (predicted, _best_ious(predicted, split["boxes"]))
        if keep[name].any():
            summary["paper_threshold"][name] = localisation_accuracies(
                paper[name][1][keep[name]] >= protocol.IOU_THRESHOLD, split, keep[name])
    scored = {method: scoring.score(settings, _maps(tune, key), _maps(evaluation, key))
              for key, method in (("prob", METHOD), ("gradient", GRADIENT))}

    table, num_eval = [], summary["num_images"]["eval_scored"]
    if num_eval:
        gt_eval = [b for b, k in zip(evaluation["boxes"], keep["eval"]) if k]
        sizes_eval = [m.shape for m in evaluation["prob"][keep["eval"]]]
        priors = scoring.priors(tune.get("boxes", []), [m.shape for m in tune.get("prob", ())],
                                evaluation["boxes"], [m.shape for m in evaluation["prob"]])
        whole = priors["whole_image"]["eval_error"]
        summary["whole_image"] = {"eval_accuracy": 1.0 - whole, "eval_error": whole}
        summary["max_box_acc"] = {method: result["max_box_acc"] for method, result in scored.items()}
        table.append(_table_row("ALN, paper threshold (Sec. 3.2: 0.7 mean + 0.3 max)", "", num_eval,
                                max_box_acc=summary["max_box_acc"][METHOD]["mean"],
                                **{k: v for k, v in summary["paper_threshold"]["eval"].items()
                                   if k.endswith("_accuracy")}))

    tuned = scored[METHOD]["tuned"]
    gradient_rows = {}
    if tuned:
        errors = {method: result["errors"] for method, result in scored.items()}
        errors["centred_box"] = priors["centred_box"]
        summary["localisation_error"] = errors
        top1 = {}
        for method, result in scored.items():
            best = result["best"]
            per = result["per_image"]["eval"][best["strategy"]]
            top1[method] = {"strategy": best["strategy"], "alpha": best["alpha"],
                            **localisation_accuracies(per["correct"][keep["eval"]], evaluation, keep["eval"])}
            if method == METHOD:
                fraction = errors["centred_box"]["fraction"]
                summary["centred_box_iou"] = {
                    "fraction": fraction, "best_tuned": centred_box_iou(per["box"][keep["eval"]], sizes_eval, fraction),
                    "paper_threshold": centred_box_iou(paper["eval"][0][keep["eval"]], sizes_eval, fraction),
                    "true_boxes": centred_box_iou(gt_eval, sizes_eval, fraction)}
        for key in ("top1_accuracy", "top1_error"):
            del top1[GRADIENT][key]  # the gradient's boxes go with the Metric 2 classifier's class only
        summary["top1_localisation"] = top1
        a, g = top1[METHOD], top1[GRADIENT]
        table.append(_table_row(f"ALN, best tuned strategy ({a['strategy']}, α={a['alpha']:g})", "", num_eval,
                                a["gt_known_accuracy"], a["top1_accuracy"], a["top1_strong_accuracy"]))
        table.append(_table_row(f"input gradient of the Metric 2 classifier ({g['strategy']}, α={g['alpha']:g})",
                                "", num_eval, g["gt_known_accuracy"], None, g["top1_strong_accuracy"],
                                summary["max_box_acc"][GRADIENT]["mean"]))
        gradient_rows = {name: scored[GRADIENT]["per_image"][name][g["strategy"]] for name in splits}
    summary["chosen_alpha"] = scored[METHOD]["chosen_alpha"]

    summary["compare"] = [compare_row(path, evaluation.get("image_id", ())) for path in compare_results]
    table += summary["compare"]
    if tuned:
        c = errors["centred_box"]
        table.append(_table_row(f"centred box (side {c['fraction']:g}, chosen on tuning)", "", num_eval,
                                c["eval_accuracy"]))
    if num_eval:
        table.append(_table_row("whole image", "", num_eval, summary["whole_image"]["eval_accuracy"]))
    summary["table"] = table
    return summary, _per_image_rows(splits, paper, scored[METHOD]["per_image"], gradient_rows)


def _per_image_rows(splits: dict, paper: dict, per_image: dict, gradient_rows: dict) -> list[dict]:
    rows = []
    for name, split in splits.items():
        if not len(split.get("image_id", ())):
            continue
        for i, image_id in enumerate(split["image_id"]):
            row = {"split": name, "image_id": str(image_id), "label": int(split["label"][i]),
                   "aln_predicted": int(split["aln_predicted"][i]),
                   "strong_predicted": int(split["strong_predicted"][i]), "num_gt_boxes": len(split["boxes"][i]),
                   **_box_cells(*paper[name], i, "paper")}
            for s, r in per_image[name].items():
                row.update(_box_cells(r["box"], r["iou"], i, s))
            if gradient_rows:
                row.update(_box_cells(gradient_rows[name]["box"], gradient_rows[name]["iou"], i, "gradient"))
            rows.append(row)
    return rows


def evaluate(config: ml_collections.ConfigDict, workdir: str, predict_fn, strong_fn) -> dict:
    """Predicts, gathers, scores (process 0) and writes ``workdir/eval/``; returns the summary on every process.

    ``ms_per_image``: wall time of the ``predict_fn`` and ``strong_fn`` calls per image, averaged over processes
    (each process times its own batches), after one untimed batch that compiles them.
    """
    if jax.process_index() == 0:
        for path in config.eval.compare_results:
            _read_compare(path)  # a missing file fails before any prediction
    size = config.data.image_size
    warm_up = np.zeros((config.eval.batch_size, size, size, 3), np.uint8)
    jax.tree.map(np.asarray, (predict_fn(warm_up), strong_fn(warm_up)))
    gathered = {"tune": {}, "eval": {}}
    for name, split, figures in (("tune", config.data.tune_split, 0),
                                 ("eval", config.data.eval_split, config.eval.num_figures)):
        if split:
            examples, _ = eval.datasets.load(config.data, split)
            share = predict.process_share(examples, jax.process_index(), jax.process_count())
            gathered[name] = predict.gather(predict.predict_split(share, predict_fn, strong_fn,
                                                                  config.eval.batch_size, figures))
    seconds = sum(float(s["predict_seconds"].sum()) for s in gathered.values() if s)
    images = sum(len(s["image_id"]) for s in gathered.values() if s)
    payload = b""
    if jax.process_index() == 0:
        summary, per_image = score(config, gathered["tune"], gathered["eval"], config.eval.compare_results)
        summary["ms_per_image"] = 1000.0 * seconds / images if images else None
        report.write_report(os.path.join(workdir, "eval"), config, summary, per_image, gathered["eval"])
        payload = json.dumps(summary).encode()
    return json.loads(distributed.allgather_bytes(payload)[0])
