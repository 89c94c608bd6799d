"""The ALN's evaluation report: ``table.md`` (GT-known and top-1 localisation, ALN paper Sec. 3.1; the protocol's
tuned strategies, Fong & Vedaldi 2017; MaxBoxAcc, wsolevaluation, Choe et al. 2020), ``results.json`` and
``results.csv`` (``eval.report.write_results``), the paper's Figure 2 (image, masked image, mask, true and Sec. 3.2
boxes) and Figure 4 (Sec. 3.4's ablation). The numbers are ``aln_jax.evaluate.score``'s.
"""

import os

import numpy as np
from skimage import io as skio
from skimage import transform

from aln_jax.predict import FIGURE_KEYS
from eval import boxes as box_ops
from eval import report as eval_report

FIGURE_COLUMNS = ("image", "masked image", "mask intensity", "true (green), ALN (red)")


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
