"""What both jobs write: ``results.json`` and ``results.csv``, and pictures of maps and boxes (a colourised map over
its image, box outlines, grids of tiles under column names)."""

import csv
import json
import os

import numpy as np
from PIL import Image, ImageDraw
from skimage import transform

# Anchors of a perceptually ordered dark-to-bright colour map (black, purple, orange, pale yellow).
_CMAP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)
GT_COLOUR, PRED_COLOUR = (0, 255, 0), (255, 0, 0)
GRID_HEADER = 16  # pixels above a grid, for the column names


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


def overlay(image: np.ndarray, saliency: np.ndarray, weight: float = 0.6) -> np.ndarray:
    """The colourised map over a grey copy of the image (uint8 RGB, the image's size)."""
    heat = colourise(transform.resize(np.asarray(saliency, np.float32), image.shape[:2], order=1)).astype(np.float32)
    grey = np.repeat(image.astype(np.float32).mean(axis=-1, keepdims=True), 3, axis=-1)
    return (weight * heat + (1 - weight) * grey).astype(np.uint8)


def figure_grid(images, columns: list[tuple[str, np.ndarray, list]], gt_boxes, scale: int = 1) -> np.ndarray:
    """Figure 4 of the paper: one row per image, the image then one column per method (its map over the image,
    true boxes green, the method's box red); ``columns`` = [(title, maps, predicted boxes)]."""
    rows = []
    for i, image in enumerate(images):
        tiles = [image] + [overlay(image, maps[i]) for _, maps, _ in columns]
        for j, tile in enumerate(tiles):
            for b in gt_boxes[i]:
                draw_box(tile, b, GT_COLOUR)
            if j:
                draw_box(tile, columns[j - 1][2][i], PRED_COLOUR)
        rows.append(tiles)
    return grid(rows, ["image"] + [title for title, _, _ in columns], scale)


def grid(rows: list[list[np.ndarray]], columns, scale: int) -> np.ndarray:
    """Rows of equal tiles 2 px apart, upscaled by ``scale`` (np.kron), 4 px between rows,
    under a white strip naming the ``columns``."""
    strips = []
    for tiles in rows:
        gap = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        strip = np.concatenate([x for tile in tiles for x in (tile, gap)][:-1], axis=1)
        strips.append(np.kron(strip, np.ones((scale, scale, 1), np.uint8)))
    h, w = strips[0].shape[:2]
    canvas_array = np.full((GRID_HEADER + len(strips) * (h + 4), w + 4, 3), 255, np.uint8)
    for i, strip in enumerate(strips):
        canvas_array[GRID_HEADER + i * (h + 4):GRID_HEADER + i * (h + 4) + h, :w] = strip
    canvas = Image.fromarray(canvas_array)
    draw = ImageDraw.Draw(canvas)
    step = (rows[0][0].shape[1] + 2) * scale
    for c, name in enumerate(columns):
        draw.text((c * step + 2, 2), name, fill=(0, 0, 0))
    return np.asarray(canvas)


def write_results(directory: str, summary: dict, per_image: list[dict]) -> None:
    """``results.json`` (the summary and the per-image rows) and ``results.csv`` (the rows) in ``directory``."""
    with open(os.path.join(directory, "results.json"), "w") as f:
        json.dump({"summary": summary, "per_image": per_image}, f, indent=1)
    if per_image:
        with open(os.path.join(directory, "results.csv"), "w", newline="") as f:
            fields = list(dict.fromkeys(k for row in per_image for k in row))  # methods' diagnostics differ
            writer = csv.DictWriter(f, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(per_image)
