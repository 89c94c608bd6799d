"""Writes the job's outputs: results.json, results.csv, table.md and figure.png (a row per image, a column per
method: each map over its image with its box)."""

import os

from skimage import io as skio

from eval import report as eval_report
from perturb_jax import methods


def method_label(config, method: str) -> str:
    """The method's name in the tables and results (``Method.label`` of its options names the variant)."""
    label = methods.get(method).label
    return label(config.method[method]) if label else method


def _settings(config, method: str) -> str:
    """The options of ``method`` that differ from its module's defaults (the reference's), e.g. fewer masks."""
    defaults = {k: o.default for k, o in methods.get(method).options.items()}
    changed = [f"{k}={v}" for k, v in config.method[method].items() if k in defaults and
               (tuple(v) if isinstance(v, (list, tuple)) else v) != defaults[k]]
    return ", ".join(changed) or "defaults"


def markdown_table(summary: dict, config) -> str:
    """Localisation error (evaluation split) per method and strategy, alphas tuned on the tuning split (or at the
    given alphas without one), MaxBoxAcc, seconds per image and each method's settings."""
    strategies = tuple(config.protocol.strategies)
    errors = summary.get("localisation_error")
    if not errors:
        return "No evaluation image has ground-truth boxes: nothing was scored.\n"
    n = summary["num_images"]
    if summary["tuned"]:
        head = (f"Localisation error (IoU < 0.5) on {n['eval_scored']} evaluation images; each threshold chosen on "
                f"{n['tune_scored']} tuning images.\n\n")
    else:
        head = (f"Localisation error (IoU < 0.5) on the {n['eval_scored']} evaluation images with boxes, each "
                "strategy at its given alpha (config.protocol.given_alphas): no tuning images.\n\n")
    cols = list(strategies) + ["best on tuning", "MaxBoxAcc (IoU .3/.5/.7 mean)", "s / image", "settings"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method in config.methods:
        label = method_label(config, method)
        r = errors[label]
        cells = [f"{r[s]['eval_error']:.3f} (α={r[s]['alpha']:g})" for s in strategies]
        cells.append(f"{r['best']['eval_error']:.3f} ({r['best']['strategy']})" if "best" in r else "-")
        cells.append(f"{summary['max_box_acc'][label]['mean']:.3f}")
        seconds = summary["seconds_per_image"].get(label)
        cells.append("-" if seconds is None else f"{seconds:.3g}")
        cells.append(_settings(config, method))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    blank = " | ".join([""] * len(strategies))
    if "centred_box" in errors:
        c = errors["centred_box"]
        lines.append(f"| centred box | {blank} | {c['eval_error']:.3f} (side {c['fraction']:g}) | | | |")
    lines.append(f"| whole image | {blank} | {errors['whole_image']['eval_error']:.3f} | | | |")
    return head + "\n".join(lines) + "\n"


def write_all(workdir: str, config, summary: dict, per_image: list[dict], evaluation: dict) -> None:
    """results.json, results.csv, table.md and figure.png (the first ``num_figures`` evaluation images, a column
    per method, each box at the method's best strategy on the tuning images)."""
    eval_report.write_results(workdir, summary, per_image)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(markdown_table(summary, config))
    figure_path = os.path.join(workdir, "figure.png")
    if os.path.exists(figure_path):
        os.remove(figure_path)  # a resumed run with num_figures = 0 must not leave an old figure behind
    if not (config.num_figures and "images" in evaluation):
        return
    images = evaluation["images"][: config.num_figures]
    columns = []
    for method in config.methods:
        label = method_label(config, method)
        best = summary.get("localisation_error", {}).get(label, {}).get("best", {})
        strategy = best.get("strategy", config.protocol.strategies[0])
        rows = [r for r in per_image if r["split"] == "eval" and r["method"] == label][: len(images)]
        boxes = [[int(v) for v in r[f"{strategy}_box"].split()] for r in rows]
        columns.append((label, evaluation[f"{method}/saliency"][: len(images)], boxes))
    scale = max(1, 128 // images.shape[1])
    skio.imsave(figure_path, eval_report.figure_grid(images, columns, evaluation["boxes"][: len(images)], scale),
                check_contrast=False)
