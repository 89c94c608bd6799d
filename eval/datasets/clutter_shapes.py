"""clutter_shapes: a synthetic localisation benchmark generated locally, with no download.

Each image holds exactly one labelled object, one of ten parametric shapes (``CLASS_NAMES``), drawn over clutter
(strokes and blobs) on a smooth random background, with its pixel mask and tight box. ``render`` regenerates any
example alone; ``ClutterShapes`` lists the features, splits and configs; docs/design-notes.md, how it is drawn.
"""

import dataclasses
import functools
import struct
import zlib

import numpy as np
import tensorflow_datasets as tfds
from skimage import transform

CLASS_NAMES = (
    "ring",
    "triangle",
    "square",
    "plus",
    "star",
    "crescent",
    "l_shape",
    "t_shape",
    "arrow",
    "h_shape",
)
SPLITS = ("train", "validation")
MIN_SIDE, MAX_SIDE = 0.25, 0.70

_RING_INNER = 0.55
_RING_BOX = np.array([[-1.0, -1.0], [1.0, 1.0]])
_MIN_CONTRAST = 0.3
_COLOUR_CANDIDATES = 8
_SURROUND_SAMPLES = 96
_HALF_VERTICES = 32
_PLACEMENT_TRIES = 100


def _regular(radii, num):
    """Vertices (x, y) at angles 90 + 360 k / num degrees with the given radii, cycled."""
    angles = np.pi / 2 + 2 * np.pi * np.arange(num) / num
    r = np.resize(np.asarray(radii, float), num)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], 1)


def _crescent(offset=0.5, cut=0.85, num=24):
    """A unit disk minus a disk of radius ``cut`` centred ``offset`` to its right, as a polygon."""
    x0 = (1 - cut**2 + offset**2) / (2 * offset)
    outer0 = np.arctan2(np.sqrt(1 - x0**2), x0)
    inner0 = np.arctan2(np.sqrt(1 - x0**2), x0 - offset)
    outer = np.linspace(outer0, 2 * np.pi - outer0, num)
    inner = np.linspace(2 * np.pi - inner0, inner0, num)
    return np.concatenate(
        [
            np.stack([np.cos(outer), np.sin(outer)], 1),
            np.stack([offset + cut * np.cos(inner), cut * np.sin(inner)], 1),
        ]
    )


def _shape_polygons():
    """Canonical outlines (x, y) within [-1, 1]^2 of every class but the ring (None)."""
    a = 0.34
    return {
        "ring": None,
        "triangle": _regular([1.0], 3),
        "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float),
        "plus": np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
             [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]], float),
        "star": _regular([1.0, 0.42], 10),
        "crescent": _crescent(),
        "l_shape": np.array(
            [[-1, -1], [0.7, -1], [0.7, -0.25], [-0.25, -0.25], [-0.25, 1], [-1, 1]], float),
        "t_shape": np.array(
            [[-0.33, -1], [0.33, -1], [0.33, 0.3], [1, 0.3], [1, 1], [-1, 1], [-1, 0.3],
             [-0.33, 0.3]], float),
        "arrow": np.array(
            [[-0.3, -1], [0.3, -1], [0.3, 0], [0.95, 0], [0, 1], [-0.95, 0], [-0.3, 0]], float),
        "h_shape": np.array(
            [[-1, -1], [-0.4, -1], [-0.4, -0.3], [0.4, -0.3], [0.4, -1], [1, -1], [1, 1],
             [0.4, 1], [0.4, 0.3], [-0.4, 0.3], [-0.4, 1], [-1, 1]], float),
    }


_POLYGONS = _shape_polygons()


def example_rng(seed, split, index):
    """The generator that draws example ``index`` of ``split``: every example is drawn from its own generator,
    ``np.random.default_rng((seed, SPLITS.index(split), index))``, so ``render(image_size, seed, split, index,
    clutter)`` regenerates any example alone."""
    return np.random.default_rng((seed, SPLITS.index(split), index))


@functools.lru_cache(maxsize=None)
def _upsampling_matrix(coarse, size):
    """(size, coarse) matrix applying skimage's order-3 resize along one axis (it is linear)."""
    return transform.resize(
        np.eye(coarse), (size, coarse), order=3, mode="reflect", clip=False,
        preserve_range=True, anti_aliasing=False).astype(np.float32)


def _smooth_field(rng, size):
    """A smooth random colour field in [0, 1]: a 2x2 to 5x5 grid of colours resized bicubically."""
    coarse = rng.integers(2, 6)
    colours = rng.random((coarse, coarse, 3), dtype=np.float32)
    up = _upsampling_matrix(coarse, size)
    field = up @ colours.transpose(2, 0, 1) @ up.T
    return np.clip(field.transpose(1, 2, 0), 0.0, 1.0)


def _outline(mask, width=2):
    """The pixels within ``width`` pixels (chessboard distance) of ``mask`` but outside it."""
    size = mask.shape[0]
    padded = np.zeros((size + 2 * width, size + 2 * width), bool)
    padded[width:width + size, width:width + size] = mask
    rows = padded[:size].copy()
    for k in range(1, 2 * width + 1):
        rows |= padded[k:k + size]
    grown = rows[:, :size].copy()
    for k in range(1, 2 * width + 1):
        grown |= rows[:, k:k + size]
    return grown & ~mask


def _contrasting(candidates, surround):
    """Index of the first candidate colour whose contrast with ``surround`` reaches the minimum.

    ``candidates`` is (..., C, 3) and ``surround`` (..., N, 3); contrast is the 10th percentile over
    the N surround colours of the RGB distance; without a passing candidate, the most contrasting.
    """
    distance = np.sqrt(((surround[..., None, :, :] - candidates[..., :, None, :]) ** 2).sum(-1))
    decile = distance.shape[-1] // 10
    contrast = np.partition(distance, decile, axis=-1)[..., decile]
    passing = contrast >= _MIN_CONTRAST
    return np.where(passing.any(-1), passing.argmax(-1), contrast.argmax(-1))


def _paint_clutter(rng, canvas, masks):
    """``canvas`` with ``masks`` painted in order (later on top), in contrasting colours.

    An item's surround is the mean colour of the canvas it covers (the smooth field, before any
    clutter is painted), sampled on every other row and column.
    """
    count = masks.shape[0]
    covered = masks[:, ::2, ::2].reshape(count, -1).astype(canvas.dtype)
    under = covered @ canvas[::2, ::2].reshape(-1, 3) / np.maximum(covered.sum(1), 1)[:, None]
    candidates = rng.random((count, _COLOUR_CANDIDATES, 3), dtype=canvas.dtype)
    colours = candidates[np.arange(count), _contrasting(candidates, under[:, None])]
    top = (masks * np.arange(1, count + 1, dtype=np.uint8)[:, None, None]).max(0)
    palette = np.concatenate([np.zeros((1, 3), canvas.dtype), colours])
    return np.where(top[..., None] > 0, palette[top], canvas)


def _paint_object(rng, canvas, mask):
    """``canvas`` with ``mask`` in a colour contrasting with the pixels just outside it.

    The surround is at most ``_SURROUND_SAMPLES`` evenly spaced pixels within two pixels of the
    mask, clutter included, so that 90% of the border contrasts (some candidate passes in practice).
    """
    candidates = rng.random((_COLOUR_CANDIDATES, 3), dtype=canvas.dtype)
    surround = canvas[_outline(mask)]
    surround = surround[:: -(-len(surround) // _SURROUND_SAMPLES)]
    painted = canvas.copy()
    painted[mask] = candidates[_contrasting(candidates, surround)]
    return painted


def _polygon_masks(points, size):
    """Boolean (K, size, size) masks of the pixel centres inside K polygons, (K, V, 2) (row, col).

    Even-odd rule by scanlines: an edge from row y0 to y1 crosses the rows r with
    min(y0, y1) <= r < max(y0, y1); crossing row r at column x, it flips the parity of the pixels
    to the right of x, counted with a cumulative sum.
    """
    count, vertices = points.shape[:2]
    starts, ends = points.reshape(-1, 2), np.roll(points, -1, axis=1).reshape(-1, 2)
    (y0, x0), (y1, x1) = starts.T, ends.T
    top = np.clip(np.ceil(np.minimum(y0, y1)), 0, size).astype(np.int64)
    crossed = np.clip(np.ceil(np.maximum(y0, y1)), 0, size).astype(np.int64) - top
    edges = np.repeat(np.arange(len(y0)), crossed)
    rows = np.arange(len(edges)) - np.repeat(np.cumsum(crossed) - crossed - top, crossed)
    y0, x0, y1, x1 = y0[edges], x0[edges], y1[edges], x1[edges]
    x = x0 + (rows - y0) / (y1 - y0) * (x1 - x0)
    first = np.clip(np.floor(x).astype(np.int64) + 1, 0, size)
    flips = np.bincount(
        (edges // vertices * size + rows) * (size + 1) + first, minlength=count * size * (size + 1))
    flips = flips.reshape(count, size, size + 1)[..., :size]
    return (np.cumsum(flips, axis=2) & 1).astype(bool)


def _strokes(rng, size, count):
    """(count, 2 * _HALF_VERTICES, 2) outlines of quadratic Bezier curves, 1.5 px to 7% wide."""
    control = rng.uniform(-0.1 * size, 1.1 * size, (count, 3, 1, 2))
    half_width = 0.5 * rng.uniform(1.5, max(1.5, 0.07 * size), (count, 1, 1))
    t = np.linspace(0.0, 1.0, _HALF_VERTICES)[:, None]
    curve = (1 - t) ** 2 * control[:, 0] + 2 * t * (1 - t) * control[:, 1] + t**2 * control[:, 2]
    tangent = (1 - t) * (control[:, 1] - control[:, 0]) + t * (control[:, 2] - control[:, 1])
    normal = tangent[..., ::-1] * (1, -1)
    normal = half_width * normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-9)
    return np.concatenate([curve + normal, (curve - normal)[:, ::-1]], axis=1)


def _blobs(rng, size, count):
    """(count, 2 * _HALF_VERTICES, 2) outlines of irregular blobs 16-40% of the side across.

    A blob is a disk whose radius varies with the angle by random 2nd and 3rd harmonics.
    """
    radius = 0.5 * size * rng.uniform(0.16, 0.40, (count, 1))
    centre = rng.uniform(0, size, (count, 1, 2))
    amplitude = rng.uniform(0.12, 0.3, (count, 2, 1))
    phase = rng.uniform(0, 2 * np.pi, (count, 2, 1))
    theta = np.linspace(0, 2 * np.pi, 2 * _HALF_VERTICES, endpoint=False)
    harmonics = np.cos(np.array([[2], [3]]) * theta + phase)
    r = radius * (1 + (amplitude * harmonics).sum(1))
    return centre + r[..., None] * np.stack([np.sin(theta), np.cos(theta)], -1)


def _clutter(rng, size):
    """(K, size, size) masks of 3-5 strokes and 2-4 blobs, in random drawing order."""
    outlines = np.concatenate(
        [_strokes(rng, size, rng.integers(3, 6)), _blobs(rng, size, rng.integers(2, 5))])
    return _polygon_masks(rng.permutation(outlines), size)


def _placed_points(polygon, draws):
    """``polygon`` mirrored (when draws[1] < 0.5) and rotated by 2 pi draws[0], in (row, col)."""
    c, s = np.cos(2 * np.pi * draws[0]), np.sin(2 * np.pi * draws[0])
    m = -1.0 if draws[1] < 0.5 else 1.0
    return polygon @ np.array([[-s * m, c * m], [-c, -s]])


def _shape_mask(rng, name, size):
    """Mask of one randomly placed, scaled, rotated and mirrored ``name``, both box sides in range.

    The long side of the continuous box is uniform over the range that keeps both sides within
    ``MIN_SIDE``-``MAX_SIDE`` of ``size`` after rasterisation (which moves a side by about a pixel;
    a draw whose pixel box still falls outside, at a sharp tip, is drawn again), and the box is
    uniform over the positions inside the image.
    """
    low_px, high_px = np.ceil(MIN_SIDE * size), np.floor(MAX_SIDE * size)
    polygon = _POLYGONS[name]
    for _ in range(_PLACEMENT_TRIES):
        draws = rng.random(5)
        points = _RING_BOX if polygon is None else _placed_points(polygon, draws)
        lower = points.min(0)
        extent = points.max(0) - lower
        low = (MIN_SIDE * size + 1.5) * extent.max() / extent.min()
        high = MAX_SIDE * size - 1.0
        scale = (low + draws[2] * (high - low)) / extent.max()
        offset = -0.5 + draws[3:] * (size - scale * extent) - scale * lower
        if polygon is None:
            grid = np.arange(size)
            radius2 = (grid[:, None] - offset[0]) ** 2 + (grid - offset[1]) ** 2
            mask = (radius2 <= scale**2) & (radius2 >= (_RING_INNER * scale) ** 2)
        else:
            mask = _polygon_masks((offset + scale * points)[None], size)[0]
        box = tight_box(mask)
        sides = box[2:] - box[:2] + 1
        if sides.min() >= low_px and sides.max() <= high_px:
            return mask
    raise RuntimeError(f"could not place a {name} in a {size}x{size} image")


def tight_box(mask):
    """Inclusive pixel box (ymin, xmin, ymax, xmax), int32, of the true pixels of a 2-D mask."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1], cols[-1]], np.int32)


def render(image_size, seed, split, index, clutter=True):
    """Draws example ``index`` of ``split``: dict of image (uint8), mask (bool), label, box, and the
    layers background (the smooth field) and noise, float32 (S, S, 3), that the image is made of.

    ``box`` is the inclusive pixel box (ymin, xmin, ymax, xmax), int32, tight around ``mask``.
    Without ``clutter`` the clutter is drawn all the same (so that every later draw is the same) but
    not painted.
    """
    rng = example_rng(seed, split, index)
    label = int(rng.integers(len(CLASS_NAMES)))
    background = _smooth_field(rng, image_size)
    cluttered = _paint_clutter(rng, background, _clutter(rng, image_size))
    mask = _shape_mask(rng, CLASS_NAMES[label], image_size)
    canvas = _paint_object(rng, cluttered if clutter else background, mask)
    noise = (rng.random(canvas.shape, dtype=np.float32) - 0.5) * rng.uniform(0.08, 0.2)
    image = np.clip((canvas + noise) * 255 + 0.5, 0, 255).astype(np.uint8)
    return {"image": image, "mask": mask, "label": label, "box": tight_box(mask),
            "background": background, "noise": noise}


def normalised_box(box, image_size):
    """Inclusive pixel box to TFDS's normalised (ymin, xmin, ymax + 1, xmax + 1) / size."""
    ymin, xmin, ymax, xmax = (int(v) for v in box)
    return tfds.features.BBox(
        ymin / image_size, xmin / image_size, (ymax + 1) / image_size, (xmax + 1) / image_size)


def pixel_boxes(bboxes, height, width):
    """TFDS normalised boxes (n, 4) to inclusive pixel boxes (n, 4) int32; inverse of the above."""
    scale = np.array([height, width, height, width], np.float64)
    boxes = np.round(np.asarray(bboxes, np.float64).reshape(-1, 4) * scale).astype(np.int32)
    return boxes - np.array([0, 0, 1, 1], np.int32)


def _png_chunk(kind, data):
    """One PNG chunk: length, type, data and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(array):
    """PNG bytes of a uint8 (H, W) grey or (H, W, 3) RGB array: unfiltered rows, zlib level 1.

    A direct encoder, several times faster than TFDS's (a TF op per image) or Pillow's.
    """
    height, width = array.shape[:2]
    colour_type = 2 if array.ndim == 3 else 0
    rows = np.concatenate([np.zeros((height, 1), np.uint8), array.reshape(height, -1)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", header),
        _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)),
        _png_chunk(b"IEND", b""),
    ])


@dataclasses.dataclass(eq=False, kw_only=True)
class ClutterShapesConfig(tfds.core.BuilderConfig):
    """A clutter_shapes variant: image side, split sizes, the seed every example derives from and
    whether the clutter is painted."""

    image_size: int = 64
    num_train: int = 20000
    num_validation: int = 2000
    seed: int = 0
    clutter: bool = True


class ClutterShapes(tfds.core.GeneratorBasedBuilder):
    """One parametric shape on a cluttered background per image, with its class, box and mask.

    Features:
      image:    uint8 (S, S, 3);
      mask:     uint8 (S, S, 1), 255 on the object's pixels and 0 elsewhere;
      label:    ClassLabel over ``CLASS_NAMES``;
      objects:  Sequence of one {'bbox': BBoxFeature}, the tight box of the mask, normalised as
                (ymin, xmin, ymax, xmax) = (top, left, bottom + 1, right + 1) / S for inclusive pixel
                rows top..bottom and columns left..right, so top = round(ymin * S) and
                bottom = round(ymax * S) - 1;
      image_id: text, ``f"{split}_{index:05d}"``.

    Splits: ``train`` and ``validation``.  The protocol divides ``validation`` into a tuning part,
    ``validation[:1000]``, and an evaluation part, ``validation[1000:]``.  Examples are written
    unshuffled: position ``i`` of a split is the example of index ``i``, with ``image_id``
    ``f"{split}_{i:05d}"``.

    Configs: ``default`` (64x64, 20000 train / 2000 validation), ``plain`` (the same examples without
    clutter) and ``tiny`` (32x32, 64 / 32, for tests); other sizes are one
    ``ClutterShapesConfig(name=..., image_size=..., ...)`` away.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ClutterShapesConfig(name="default", description="64x64, 20000 train / 2000 validation."),
        ClutterShapesConfig(
            name="plain", clutter=False,
            description="64x64, 20000 train / 2000 validation: the default examples without clutter."),
        ClutterShapesConfig(
            name="tiny", description="32x32, 64 train / 32 validation, for tests.",
            image_size=32, num_train=64, num_validation=32),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self):
        size = self.builder_config.image_size
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3)),
                "mask": tfds.features.Image(shape=(size, size, 1)),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                "objects": tfds.features.Sequence({"bbox": tfds.features.BBoxFeature()}),
                "image_id": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.num_train),
            "validation": self._generate_examples("validation", config.num_validation),
        }

    def _generate_examples(self, split, num_examples):
        config = self.builder_config
        for index in range(num_examples):
            example = render(config.image_size, config.seed, split, index, config.clutter)
            yield index, {
                "image": _png(example["image"]),
                "mask": _png(example["mask"].astype(np.uint8) * 255),
                "label": example["label"],
                "objects": [{"bbox": normalised_box(example["box"], config.image_size)}],
                "image_id": f"{split}_{index:05d}",
            }
