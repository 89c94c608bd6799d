"""Writes the job's outputs: results.json, results.csv, table.md and figure.png (image, map, boxes)."""

import csv
import json
import os

import numpy as np
from skimage import io as skio
from skimage import transform

from perturb_jax import scoring

# Anchors of a perceptually ordered dark-to-bright colour map (black, purple, orange, pale yellow).
_CMAP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)
GT_COLOUR, PRED_COLOUR = (0, 255, 0), (255, 0, 0)


def colourise(saliency: np.ndarray) -> np.ndarray:
    """Min-max normalised map through ``_CMAP`` -> uint8 RGB."""
    s = np.asarray(saliency, np.float32)
    s = (s - s.min()) / max(float(s.max() - s.min()), 1e-12)
    pos = s * (len(_CMAP) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(_CMAP) - 2)
    frac = (pos - lo)[..., None]
    return ((1 - frac) * _CMAP[lo] + frac * _CMAP[lo + 1]).astype(np.uint8)


def draw_box(image: np.ndarray, box, colour) -> None:
    """Draws an inclusive (ymin, xmin, ymax, xmax) box outline in place."""
    h, w = image.shape[:2]
    y0, x0, y1, x1 = (int(v) for v in box)
    y0, y1 = np.clip([y0, y1], 0, h - 1)
    x0, x1 = np.clip([x0, x1], 0, w - 1)
    image[y0, x0:x1 + 1] = image[y1, x0:x1 + 1] = colour
    image[y0:y1 + 1, x0] = image[y0:y1 + 1, x1] = colour


def figure(images, maps, gt_boxes, pred_boxes, scale: int = 1, columns: int = 4) -> np.ndarray:
    """A grid of tiles [image | map | image with true (green) and predicted (red) boxes], 2 px gaps."""
    tiles = []
    for image, saliency, gt, pred in zip(images, maps, gt_boxes, pred_boxes):
        boxed = image.copy()
        for b in gt:
            draw_box(boxed, b, GT_COLOUR)
        draw_box(boxed, pred, PRED_COLOUR)
        heat = colourise(transform.resize(saliency, image.shape[:2], order=1))
        tile = np.concatenate([image, np.full((image.shape[0], 2, 3), 255, np.uint8), heat,
                               np.full((image.shape[0], 2, 3), 255, np.uint8), boxed], axis=1)
        tiles.append(np.kron(tile, np.ones((scale, scale, 1), np.uint8)))
    if not tiles:
        return np.zeros((1, 1, 3), np.uint8)
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * (h + 4), min(columns, len(tiles)) * (w + 4), 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (h + 4):r * (h + 4) + h, c * (w + 4):c * (w + 4) + w] = tile
    return grid


def markdown_table(summary: dict, strategies) -> str:
    """Localisation error (evaluation split) per method and strategy, alphas tuned on the tuning split."""
    errors = summary.get("localisation_error")
    if not errors:
        return "No image of both splits has ground-truth boxes: nothing was scored.\n"
    n = summary["num_images"]
    head = (f"Localisation error (IoU < 0.5) on {n['eval_scored']} evaluation images; each threshold chosen on "
            f"{n['tune_scored']} tuning images.\n\n")
    cols = list(strategies) + ["best on tuning", "MaxBoxAcc (IoU .3/.5/.7 mean)"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method in (summary["method"], "input_gradient"):
        r = errors[method]
        cells = [f"{r[s]['eval_error']:.3f} (α={r[s]['alpha']:g})" for s in strategies]
        cells.append(f"{r['best']['eval_error']:.3f} ({r['best']['strategy']})")
        cells.append(f"{summary['max_box_acc'][method]['mean']:.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    c = errors["centred_box"]
    lines.append("| centred box | " + " | ".join([""] * len(strategies))
                 + f" | {c['eval_error']:.3f} (side {c['fraction']:g}) | |")
    lines.append("| whole image | " + " | ".join([""] * len(strategies))
                 + f" | {errors['whole_image']['eval_error']:.3f} | |")
    return head + "\n".join(lines) + "\n"


def write_results(directory: str, summary: dict, per_image: list[dict]) -> None:
    """``results.json`` (the summary and the per-image rows) and ``results.csv`` (the rows) in ``directory``."""
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"summary": summary, "per_image": per_image}, f, indent=1)
    if per_image:
        with open(os.path.join(directory, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(per_image[0]))
            writer.writeheader()
            writer.writerows(per_image)


def write_all(workdir: str, config, summary: dict, per_image: list[dict], evaluation: dict) -> None:
    write_results(workdir, summary, per_image)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(markdown_table(summary, config.protocol.strategies))
    figure_path = os.path.join(workdir, "figure.png")
    if os.path.exists(figure_path):
        os.remove(figure_path)  # a resumed run with num_figures = 0 must not leave an old figure behind
    if config.num_figures and "images" in evaluation:
        images = evaluation["images"][: config.num_figures]
        strategy = summary.get("localisation_error", {}).get(scoring.method_name(config), {}).get(
            "best", {}).get("strategy", config.protocol.strategies[0])
        rows = [r for r in per_image if r["split"] == "eval"][: len(images)]
        preds = [[int(v) for v in r[f"{strategy}_box"].split()] for r in rows]
        scale = max(1, 192 // images.shape[1])
        skio.imsave(figure_path,
                    figure(images, evaluation["saliency"][: len(images)], evaluation["boxes"][: len(images)], preds,
                           scale), check_contrast=False)
