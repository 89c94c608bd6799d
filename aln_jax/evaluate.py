"""Evaluation of the Adversarial Localization Network: boxes from its occlusion maps, scored beside the baselines.

``evaluate(config, workdir, predict_fn, strong_fn)`` predicts both splits (each process its share), gathers them,
scores them on process 0 and writes ``workdir/eval/``: ``table.md``, ``results.json``, ``results.csv`` and
``figure.png`` (paper Figure 2). Two box rules are scored on the occlusion probability map:
  - the paper's (Sec. 3.2): pixels >= 0.7 mean + 0.3 max, box of the largest connected component, no tuning;
  - the project's protocol (``eval.protocol``, as ``eval.scoring``): three strategies, alpha tuned on the
    tuning split, reported on the evaluation split, and MaxBoxAcc.
Each box rule is reported as GT-known localisation accuracy (best IoU >= 0.5 with a true box) and top-1
localisation (that and the class right; Sec. 3.1: Metric 1 with the ALN's own classifier, Metric 2 with the
stronger classifier). Maps and boxes are scored at ``data.image_size``; accuracies are fractions (higher is better).
"""

import io
import json
import os
import time

import jax
import ml_collections
import numpy as np
from skimage import io as skio
from skimage import transform

import eval.datasets
from eval import boxes as box_ops
from eval import protocol
from eval import report as eval_report
from perturb_jax.runtime import distributed

METHOD = "aln"
GRADIENT = "input_gradient"
FIGURE_KEYS = ("images", "masked", "prob_small")
FIGURE_COLUMNS = ("image", "masked image", "mask intensity", "true (green), ALN (red)")


def process_share(examples, process_index: int, process_count: int):
    """Every ``process_count``-th example starting at ``process_index``: this process's part of a split."""
    return (ex for i, ex in enumerate(examples) if i % process_count == process_index)


def _predict_batch(batch: list, predict_fn, strong_fn, batch_size: int) -> tuple[dict, float]:
    """One batch padded to ``batch_size`` with its last image (no recompiling), padding dropped after the calls."""
    n = len(batch)
    images = np.stack([ex["image"] for _, ex in batch] + [batch[-1][1]["image"]] * (batch_size - n))
    start = time.perf_counter()
    aln = {k: np.asarray(v) for k, v in predict_fn(images).items()}
    strong = {k: np.asarray(v) for k, v in strong_fn(images).items()}
    seconds = time.perf_counter() - start
    size = images.shape[1:3]
    prob = aln["prob"][:n].astype(np.float32)
    prob_full = prob if prob.shape[1:] == size else np.stack(
        [box_ops.resize_map(m, size) for m in prob]).astype(np.float32)
    out = dict(position=np.array([p for p, _ in batch], np.int64),
               image_id=np.array([ex["image_id"] for _, ex in batch], str),
               label=np.array([ex["label"] for _, ex in batch], np.int32),
               boxes=[np.asarray(ex["boxes"], np.int32).reshape(-1, 4) for _, ex in batch],
               prob=prob_full, aln_predicted=aln["logits"][:n].argmax(-1).astype(np.int32),
               strong_predicted=strong["predicted"][:n].astype(np.int32),
               gradient=strong["gradient"][:n].astype(np.float32),
               images=images[:n], masked=aln["masked"][:n].astype(np.uint8), prob_small=prob)
    return out, seconds


def predict_split(examples, predict_fn, strong_fn, batch_size: int, num_figures: int) -> dict:
    """Predicts every readable example of ``examples`` (contract examples, ``eval.datasets``) in batches.

    ``predict_fn(images) -> {prob (B, h, w), logits (B, K), masked (B, h, w, 3)}`` (the ALN);
    ``strong_fn(images) -> {predicted (B,), gradient (B, H, W)}`` (Metric 2's classifier, Sec. 3.1); both always
    receive ``batch_size`` uint8 images (B, H, W, 3). Returns numpy arrays: position (index in ``examples``),
    image_id, label, boxes (list of (n, 4) int32), prob (N, H, W: ``prob`` resized with ``boxes.resize_map`` when
    h != H), aln_predicted, strong_predicted, gradient; images, masked, prob_small for the first ``num_figures``;
    skipped_id, skipped_reason, skipped_position for records with an 'error'; predict_seconds (1,): wall time of the
    two functions' calls.
    """
    parts, skipped, batch, seconds = [], [], [], 0.0

    def flush():
        nonlocal seconds
        part, took = _predict_batch(batch, predict_fn, strong_fn, batch_size)
        room = max(0, num_figures - sum(len(p["images"]) for p in parts))
        parts.append({k: v[:room] if k in FIGURE_KEYS else v for k, v in part.items()})
        seconds += took

    for position, ex in enumerate(examples):
        if "error" in ex:
            skipped.append((position, ex))
            continue
        batch.append((position, ex))
        if len(batch) == batch_size:
            flush()
            batch = []
    if batch:
        flush()
    out = {"boxes": [b for p in parts for b in p["boxes"]]}
    empty = dict(position=np.zeros(0, np.int64), image_id=np.zeros(0, str), label=np.zeros(0, np.int32),
                 prob=np.zeros(0, np.float32), aln_predicted=np.zeros(0, np.int32),
                 strong_predicted=np.zeros(0, np.int32), gradient=np.zeros(0, np.float32),
                 images=np.zeros(0, np.uint8), masked=np.zeros(0, np.uint8), prob_small=np.zeros(0, np.float32))
    for key, nothing in empty.items():
        out[key] = np.concatenate([p[key] for p in parts]) if parts else nothing
    out["skipped_id"] = np.array([ex["image_id"] for _, ex in skipped], str)
    out["skipped_reason"] = np.array([ex["error"] for _, ex in skipped], str)
    out["skipped_position"] = np.array([p for p, _ in skipped], np.int64)
    out["predict_seconds"] = np.array([seconds])
    return out


def merge_shares(shares: list[dict]) -> dict:
    """Process p's ``predict_split`` of ``process_share(examples, p, len(shares))``, for every p, as one split.

    Rows go back to the order of ``examples``; position and skipped_position become indices in ``examples``; the
    figure rows are every share's, in that order (the first num_figures of them are the split's first);
    predict_seconds has one entry per process.
    """
    count = len(shares)
    merged = {"predict_seconds": np.concatenate([s["predict_seconds"] for s in shares])}
    for key in shares[0]:
        if key == "predict_seconds":
            continue
        anchor = "skipped_position" if key.startswith("skipped_") else "position"
        where = np.concatenate([np.asarray(s[anchor][:len(s[key])], np.int64) * count + p
                                for p, s in enumerate(shares)])
        order = np.argsort(where, kind="stable")
        if key == anchor:
            merged[key] = where[order]
        elif key == "boxes":
            flat = [b for s in shares for b in s[key]]
            merged[key] = [flat[i] for i in order]
        else:
            merged[key] = np.concatenate([s[key] for s in shares if len(s[key])] or [shares[0][key]])[order]
    return merged


def gather(split: dict) -> dict:
    """Every process's ``predict_split`` of its ``process_share``, merged on every process (``merge_shares``).

    Each share travels as one ``np.savez`` archive (strings included, boxes padded with ``results_store``); with
    one process the result equals the input.
    """
    buffer = io.BytesIO()
    np.savez(buffer, **{**split, "boxes": box_ops.pad_boxes(split["boxes"])})
    shares = []
    for data in distributed.allgather_bytes(buffer.getvalue()):
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            share = dict(archive)
        share["boxes"] = [b.astype(np.int32) for b in box_ops.unpad_boxes(share["boxes"])]
        shares.append(share)
    return merge_shares(shares)


def _scored(split: dict) -> np.ndarray:
    return np.array([len(b) > 0 for b in split.get("boxes", [])], bool)


def _subset(split: dict, key: str, keep: np.ndarray) -> tuple[list, list]:
    return [m for m, k in zip(split[key], keep) if k], [b for b, k in zip(split["boxes"], keep) if k]


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
    whole_image {eval_accuracy, eval_error}; with boxes on both splits, localisation_error (as
    ``eval.scoring``: ``protocol.tune_and_evaluate`` of aln and input_gradient, and centred_box) and
    top1_localisation {aln, input_gradient} at the best strategy's alpha; compare (one row per
    ``compare_results`` file); table (the rows of table.md). Without a tuning split each strategy uses the middle
    alpha of its sweep, as ``eval.scoring`` does.
    """
    strategies = tuple(config.protocol.strategies)
    alphas = {s: np.asarray(config.protocol[f"{s}_alphas"], float) for s in strategies}
    largest = config.protocol.largest_component
    splits = {"tune": tune, "eval": evaluation}
    summary = {"method": METHOD, "num_images": {}, "skipped_images": [], "classifier_accuracy": {},
               "paper_threshold": {}}
    keep, paper = {}, {}
    for name, split in splits.items():
        n = len(split.get("image_id", ()))
        keep[name] = _scored(split)
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

    table, num_eval = [], summary["num_images"]["eval_scored"]
    if num_eval:
        gt_eval = _subset(evaluation, "prob", keep["eval"])[1]
        sizes_eval = [m.shape for m in evaluation["prob"][keep["eval"]]]
        whole = protocol.whole_image_error(gt_eval, sizes_eval)
        summary["whole_image"] = {"eval_accuracy": 1.0 - whole, "eval_error": whole}
        summary["max_box_acc"] = {
            method: {str(k): v for k, v in protocol.max_box_acc(
                *_subset(evaluation, key, keep["eval"]), interval=config.protocol.max_box_acc_interval).items()}
            for key, method in (("prob", METHOD), ("gradient", GRADIENT))}
        table.append(_table_row("ALN, paper threshold (Sec. 3.2: 0.7 mean + 0.3 max)", "", num_eval,
                                max_box_acc=summary["max_box_acc"][METHOD]["mean"],
                                **{k: v for k, v in summary["paper_threshold"]["eval"].items()
                                   if k.endswith("_accuracy")}))

    tuned = bool(summary["num_images"]["tune_scored"] and num_eval)
    gradient_rows = {}
    if tuned:
        errors = {}
        for key, method in (("prob", METHOD), ("gradient", GRADIENT)):
            errors[method] = protocol.tune_and_evaluate(
                *(protocol.sweep(*_subset(s, key, keep[n]), strategies, largest, alphas)
                  for n, s in (("tune", tune), ("eval", evaluation))), alphas)
        errors["centred_box"] = protocol.centred_box_baseline(
            _subset(tune, "prob", keep["tune"])[1], [m.shape for m in tune["prob"][keep["tune"]]],
            gt_eval, sizes_eval)
        summary["localisation_error"] = errors
        chosen = {s: errors[METHOD][s]["alpha"] for s in strategies}
        top1 = {}
        for key, method in (("prob", METHOD), ("gradient", GRADIENT)):
            best = errors[method]["best"]
            per = protocol.per_image_results(list(evaluation[key]), evaluation["boxes"],
                                             {best["strategy"]: best["alpha"]}, largest)[best["strategy"]]
            top1[method] = {"strategy": best["strategy"], "alpha": best["alpha"],
                            **localisation_accuracies(per["correct"][keep["eval"]], evaluation, keep["eval"])}
            if method == METHOD:
                summary["centred_box_iou"] = {
                    "fraction": errors["centred_box"]["fraction"],
                    "best_tuned": centred_box_iou(per["box"][keep["eval"]], sizes_eval,
                                                  errors["centred_box"]["fraction"]),
                    "paper_threshold": centred_box_iou(paper["eval"][0][keep["eval"]], sizes_eval,
                                                       errors["centred_box"]["fraction"]),
                    "true_boxes": centred_box_iou(gt_eval, sizes_eval, errors["centred_box"]["fraction"])}
        for key in ("top1_accuracy", "top1_error"):
            del top1[GRADIENT][key]  # the gradient's boxes go with the Metric 2 classifier's class only
        summary["top1_localisation"] = top1
        a, g = top1[METHOD], top1[GRADIENT]
        table.append(_table_row(f"ALN, best tuned strategy ({a['strategy']}, α={a['alpha']:g})", "", num_eval,
                                a["gt_known_accuracy"], a["top1_accuracy"], a["top1_strong_accuracy"]))
        table.append(_table_row(f"input gradient of the Metric 2 classifier ({g['strategy']}, α={g['alpha']:g})",
                                "", num_eval, g["gt_known_accuracy"], None, g["top1_strong_accuracy"],
                                summary["max_box_acc"][GRADIENT]["mean"]))
        for name, split in splits.items():
            r = protocol.per_image_results(list(split["gradient"]), split["boxes"], {g["strategy"]: g["alpha"]},
                                           largest)
            gradient_rows[name] = r[g["strategy"]]
    else:
        chosen = {s: float(alphas[s][len(alphas[s]) // 2]) for s in strategies}
    summary["chosen_alpha"] = chosen

    summary["compare"] = [compare_row(path, evaluation.get("image_id", ())) for path in compare_results]
    table += summary["compare"]
    if tuned:
        c = errors["centred_box"]
        table.append(_table_row(f"centred box (side {c['fraction']:g}, chosen on tuning)", "", num_eval,
                                c["eval_accuracy"]))
    if num_eval:
        table.append(_table_row("whole image", "", num_eval, summary["whole_image"]["eval_accuracy"]))
    summary["table"] = table
    return summary, _per_image_rows(splits, paper, chosen, largest, gradient_rows)


def _per_image_rows(splits: dict, paper: dict, chosen: dict, largest: bool, gradient_rows: dict) -> list[dict]:
    rows = []
    for name, split in splits.items():
        if not len(split.get("image_id", ())):
            continue
        per = protocol.per_image_results(list(split["prob"]), split["boxes"], chosen, largest)
        for i, image_id in enumerate(split["image_id"]):
            row = {"split": name, "image_id": str(image_id), "label": int(split["label"][i]),
                   "aln_predicted": int(split["aln_predicted"][i]),
                   "strong_predicted": int(split["strong_predicted"][i]), "num_gt_boxes": len(split["boxes"][i]),
                   **_box_cells(*paper[name], i, "paper")}
            for s, r in per.items():
                row.update(_box_cells(r["box"], r["iou"], i, s))
            if gradient_rows:
                row.update(_box_cells(gradient_rows[name]["box"], gradient_rows[name]["iou"], i, "gradient"))
            rows.append(row)
    return rows


def _cell(value) -> str:
    return "" if value is None else f"{value:.3f}"


def markdown_table(summary: dict) -> str:
    """table.md: one row per method (``summary['table']``), accuracies on the evaluation split."""
    n = summary["num_images"]
    if not summary["table"]:
        return "No evaluation image has ground-truth boxes: nothing was scored.\n"
    tuning = (f"each tuned threshold chosen on {n['tune_scored']} tuning images" if n["tune_scored"]
              else "no tuning split: only the paper's threshold is scored")
    speed = (f" ALN and Metric 2 classifier: {summary['ms_per_image']:.2f} ms per image."
             if summary.get("ms_per_image") is not None else "")
    if summary.get("centred_box_iou"):
        c = summary["centred_box_iou"]
        speed += (f" Mean IoU of the ALN's boxes with the centred box (side {c['fraction']:g}): "
                  f"{c['paper_threshold']:.3f} (paper threshold), {c['best_tuned']:.3f} (best tuned strategy); "
                  f"of the true boxes: {c['true_boxes']:.3f}.")
    head = (f"Localisation accuracy (higher is better) on {n['eval_scored']} evaluation images; {tuning}. "
            "GT-known: best IoU >= 0.5 with a true box; top-1: that and the class right (ALN Sec. 3.1), with "
            f"the method's own classifier (Metric 1) or with the stronger classifier (Metric 2).{speed}\n\n")
    cols = ["method", "GT-known loc. acc.", "top-1 loc. (own classifier)", "top-1 loc. (Metric 2 classifier)",
            "MaxBoxAcc (IoU .3/.5/.7 mean)", "images"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    for r in summary["table"]:
        method = r["method"] + (f" ({r['note']})" if r["note"] else "")
        cells = [method, _cell(r["gt_known_accuracy"]), _cell(r["top1_accuracy"]),
                 _cell(r["top1_strong_accuracy"]), _cell(r["max_box_acc_mean"]), str(r["num_images"])]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _heat(saliency: np.ndarray, size) -> np.ndarray:
    """A map colourised (``eval_report.colourise``) at ``size``, each of its pixels a block (nearest neighbour)."""
    s = np.asarray(saliency, np.float32)
    if s.shape != tuple(size):
        s = transform.resize(s, size, order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return eval_report.colourise(s)


def figure(images, masked, prob_small, prob, gt_boxes) -> np.ndarray:
    """Paper Figure 2: per image [image | masked image | mask intensity | true (green) and Sec. 3.2 (red) box]."""
    rows = []
    for image, hidden, small, full, gt in zip(images, masked, prob_small, prob, gt_boxes):
        size = image.shape[:2]
        if hidden.shape[:2] != size:
            hidden = transform.resize(hidden, size, order=0, anti_aliasing=False, preserve_range=True)
        boxed = image.copy()
        for b in gt:
            eval_report.draw_box(boxed, b, eval_report.GT_COLOUR)
        eval_report.draw_box(boxed, box_ops.adaptive_threshold_box(full), eval_report.PRED_COLOUR)
        rows.append([image, hidden.astype(np.uint8), _heat(small, size), boxed])
    return eval_report.grid(rows, FIGURE_COLUMNS, max(1, 192 // images[0].shape[0]))


def ablation_figure(path: str, images, prob_a, prob_b, labels=("co-trained", "classifier frozen")) -> None:
    """Sec. 3.4's ablation (paper Figure 4): per image [image | map of run a | map of run b], saved at ``path``."""
    size = images[0].shape[:2]
    rows = [[image, _heat(a, size), _heat(b, size)] for image, a, b in zip(images, prob_a, prob_b)]
    skio.imsave(path, eval_report.grid(rows, ("image", *labels), max(1, 192 // size[0])), check_contrast=False)


def write_report(out_dir: str, config, summary: dict, per_image: list[dict], evaluation: dict) -> None:
    """Writes table.md, results.json (summary and per-image rows), results.csv and figure.png into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    eval_report.write_results(out_dir, summary, per_image)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(markdown_table(summary))
    figure_path = os.path.join(out_dir, "figure.png")
    if os.path.exists(figure_path):
        os.remove(figure_path)  # a run with num_figures = 0 must not leave an old figure behind
    count = min(config.eval.num_figures, len(evaluation.get("images", ())))
    if count:
        skio.imsave(figure_path, figure(*(evaluation[k][:count] for k in (*FIGURE_KEYS, "prob")),
                                        evaluation["boxes"][:count]), check_contrast=False)


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
            share = process_share(examples, jax.process_index(), jax.process_count())
            gathered[name] = gather(predict_split(share, predict_fn, strong_fn, config.eval.batch_size, figures))
    seconds = sum(float(s["predict_seconds"].sum()) for s in gathered.values() if s)
    images = sum(len(s["image_id"]) for s in gathered.values() if s)
    payload = b""
    if jax.process_index() == 0:
        summary, per_image = score(config, gathered["tune"], gathered["eval"], config.eval.compare_results)
        summary["ms_per_image"] = 1000.0 * seconds / images if images else None
        write_report(os.path.join(workdir, "eval"), config, summary, per_image, gathered["eval"])
        payload = json.dumps(summary).encode()
    return json.loads(distributed.allgather_bytes(payload)[0])
