"""Boxes from saliency maps for weak localisation.

Thresholding strategies of Fong & Vedaldi (2017, ruthcfong/perturb_explanations ``getbb_from_heatmap``), the
largest-connected-component step of the perceptual-ball paper and of wsolevaluation (Choe et al. 2020), and the VOC
IoU. Boxes follow ``eval.datasets``: int32 inclusive pixel coordinates (ymin, xmin, ymax, xmax); sizes are (H, W).
"""

import numpy as np
from scipy import ndimage
from skimage import transform

STRATEGIES = ('mean', 'value', 'energy')

# Connected components use 8-connectivity inside each plane of a (T, H, W) stack, none across planes
# (``scipy.ndimage.label`` with a 3x3 structure of ones, the same partition as
# ``skimage.measure.label(connectivity=2)``; cv2 contours, used by wsolevaluation, also follow 8-connected
# foreground). Several masks of one size are labelled in one call, stacked along a first axis that the structuring
# element does not connect.
_PLANAR_8 = np.zeros((3, 3, 3), dtype=bool)
_PLANAR_8[1] = True


def check_strategy(strategy):
    """Raise ValueError unless ``strategy`` is one of ``STRATEGIES``."""
    if strategy not in STRATEGIES:
        raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')


def _check_alphas(strategy, alphas):
    alphas = np.asarray(alphas, dtype=np.float64)
    upper = 1.0 if strategy == 'energy' else np.inf
    if alphas.ndim > 1 or not np.all(np.isfinite(alphas) & (alphas >= 0) & (alphas <= upper)):
        raise ValueError(f'alpha must be finite and in [0, {upper}] for strategy {strategy!r}, got {alphas}')
    return alphas


def strategy_cuts(saliency, strategy, alphas):
    """Return ``(values, cuts)`` with ``threshold(saliency, strategy, alphas[i]) == (values >= cuts[i])``.

    Fong & Vedaldi (2017) strategies, all reduced to one comparison so that a sweep over alphas costs one sort:
      'mean':   values = s,         cut = alpha * mean(s);
      'value':  values = s - min,   cut = alpha * (max - min)   (their 'min_max_diff');
      'energy': values = s,         cut = the value of the pixel at which the cumulative sum of the pixels sorted in
                descending order first reaches alpha * total; that pixel is kept, and so is every pixel tied with it.
                alpha = 0 keeps the top pixel (and its ties), alpha = 1 every positive pixel. The original code drops
                the pixel that reaches the target (so its alpha = 0 keeps nothing, which gives the whole image).
    Computed in float64. 'energy' needs a non-negative map (a fraction of saliency mass; an all-zero map keeps every
    pixel); 'mean' and 'value' keep every pixel at alpha = 0 (the original also drops zero-valued pixels).
    """
    check_strategy(strategy)
    alphas = _check_alphas(strategy, alphas)
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f'saliency must be a non-empty 2-D map, got shape {s.shape}')
    if strategy == 'mean':
        return s, alphas * s.mean()
    if strategy == 'value':
        low = s.min()
        return s - low, alphas * (s.max() - low)
    if s.min() < 0:
        raise ValueError(f"saliency must be non-negative for strategy 'energy', got minimum {s.min()}")
    ordered = np.sort(s, axis=None)[::-1]
    cumulative = np.cumsum(ordered)
    first = np.searchsorted(cumulative, alphas * cumulative[-1], side='left')
    return s, ordered[np.minimum(first, s.size - 1)]


def threshold(saliency, strategy, alpha):
    """Boolean mask of the pixels kept by one of Fong & Vedaldi's strategies (see ``strategy_cuts``)."""
    values, cut = strategy_cuts(saliency, strategy, alpha)
    return values >= cut


def whole_image_box(size):
    """The box of the whole image of size (H, W): the trivial baseline and the box of an empty mask."""
    height, width = size
    return np.array([0, 0, height - 1, width - 1], dtype=np.int32)


def centred_box(size, fraction):
    """Box centred in an (H, W) image whose sides are ``round(fraction * H)`` by ``round(fraction * W)`` (at least 1).

    ``fraction`` is a fraction of each side (its area is ``fraction**2`` of the image); odd margins put the extra
    pixel after the box.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f'fraction must be in (0, 1], got {fraction}')
    sides = np.maximum(1, np.round(fraction * np.asarray(size, dtype=np.float64)).astype(np.int64))
    start = (np.asarray(size) - sides) // 2
    return np.concatenate([start, start + sides - 1]).astype(np.int32)


def component_boxes(masks):
    """8-connected components of each mask of a (T, H, W) stack.

    Returns ``(plane, size, box)``: for each component (in ``ndimage.label`` order, raster order of its first pixel),
    the index of its mask, its pixel count and its tight inclusive box (int64, (n, 4)). Works on the horizontal runs
    of each label rather than on pixels.
    """
    labels, count = ndimage.label(masks, structure=_PLANAR_8)
    height = labels.shape[1]
    rows = labels.reshape(-1, labels.shape[2])
    changes = rows[:, 1:] != rows[:, :-1]
    starts, ends = rows > 0, rows > 0
    starts[:, 1:] &= changes
    ends[:, :-1] &= changes
    start_row, start_col = np.nonzero(starts)
    end_col = np.nonzero(ends)[1]  # the k-th run ends on the row where it starts
    component = rows[start_row, start_col] - 1
    plane_of_run, y = np.divmod(start_row, height)
    plane = np.zeros(count, dtype=np.int64)
    plane[component] = plane_of_run  # every run of a component lies in the same plane
    extents = []
    for reduce, coordinate, initial in [(np.minimum, y, height), (np.minimum, start_col, rows.shape[1]),
                                        (np.maximum, y, -1), (np.maximum, end_col, -1)]:
        extent = np.full(count, initial, dtype=np.int64)
        reduce.at(extent, component, coordinate)
        extents.append(extent)
    sizes = np.bincount(component, weights=end_col - start_col + 1, minlength=count).astype(np.int64)
    return plane, sizes, np.stack(extents, axis=1)


def masks_to_boxes(masks, largest_component=True):
    """One box per mask of a (T, H, W) stack; see ``mask_to_box``."""
    masks = np.asarray(masks, dtype=bool)
    planes, height, width = masks.shape
    boxes = np.tile(whole_image_box((height, width)), (planes, 1))
    if largest_component:
        plane, sizes, extents = component_boxes(masks)
        order = np.lexsort((np.arange(plane.size), -sizes, plane))
        firsts = order[np.unique(plane[order], return_index=True)[1]]
        boxes[plane[firsts]] = extents[firsts]
        return boxes
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    kept = rows.any(axis=1)
    boxes[kept, 0] = rows[kept].argmax(axis=1)
    boxes[kept, 1] = cols[kept].argmax(axis=1)
    boxes[kept, 2] = height - 1 - rows[kept][:, ::-1].argmax(axis=1)
    boxes[kept, 3] = width - 1 - cols[kept][:, ::-1].argmax(axis=1)
    return boxes


def mask_to_box(mask, largest_component=True):
    """Tight inclusive box of a boolean (H, W) mask.

    ``largest_component=True``: the box of the largest 8-connected component (perceptual-ball paper, CAM,
    wsolevaluation); equal sizes go to the component whose first pixel comes first in raster order.
    ``largest_component=False``: the box of every kept pixel, as in Fong & Vedaldi's code, which has no
    connected-component step. An empty mask gives the whole image, as in Fong & Vedaldi's code.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f'mask must be 2-D, got shape {mask.shape}')
    return masks_to_boxes(mask[None], largest_component)[0]


def adaptive_threshold_box(saliency, mean_weight=0.7, max_weight=0.3, largest_component=True):
    """The Adversarial Localization Network's box (Fan, Zhao, Ermon, Sec. 3.2) of a 2-D map.

    Keeps the pixels >= ``mean_weight * mean(map) + max_weight * max(map)`` (the paper's 0.7 and 0.3), then takes
    ``mask_to_box`` of them: the tight box of the largest 8-connected component. Computed in float64.
    """
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f'saliency must be a non-empty 2-D map, got shape {s.shape}')
    return mask_to_box(s >= mean_weight * s.mean() + max_weight * s.max(), largest_component)


def saliency_boxes(saliency, strategy, alphas, largest_component=True):
    """Boxes (len(alphas), 4) of ``mask_to_box(threshold(saliency, strategy, alpha))`` for each alpha."""
    values, cuts = strategy_cuts(saliency, strategy, np.atleast_1d(alphas))
    return masks_to_boxes(values[None] >= cuts[:, None, None], largest_component)


def iou(box, boxes):
    """IoU of box(es) ``(..., 4)`` against boxes ``(n, 4)``, shape ``(..., n)``, with the VOC +1 pixel convention.

    Areas are (ymax - ymin + 1) * (xmax - xmin + 1) (Fong & Vedaldi's ``compute_overlap``, wsolevaluation).
    """
    a = np.asarray(box, dtype=np.int64)[..., None, :]
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    height = np.minimum(a[..., 2], b[:, 2]) - np.maximum(a[..., 0], b[:, 0]) + 1
    width = np.minimum(a[..., 3], b[:, 3]) - np.maximum(a[..., 1], b[:, 1]) + 1
    inter = np.maximum(height, 0) * np.maximum(width, 0)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a + area_b - inter)


def best_iou(box, boxes):
    """Best IoU of box(es) ``(..., 4)`` over the ground-truth boxes ``(n, 4)``; NaN where n = 0 (unscored image)."""
    overlaps = iou(box, boxes)
    if overlaps.shape[-1] == 0:
        return np.full(overlaps.shape[:-1], np.nan)[()]
    return overlaps.max(axis=-1)


def resize_map(saliency, size):
    """Bilinear resize of a map to ``size`` (H, W), e.g. to the original image for Fong & Vedaldi's evaluation.

    ``skimage.transform.resize`` with order 1, edge padding (pixel-centre sampling, like PyTorch's bilinear with
    ``align_corners=False``) and no anti-aliasing, in float64.
    """
    return transform.resize(np.asarray(saliency, dtype=np.float64), tuple(size), order=1, mode='edge',
                            anti_aliasing=False, preserve_range=True)


def box_to_size(box, from_size, to_size):
    """Rescale inclusive box(es) ``(..., 4)`` from an image of ``from_size`` (H, W) to one of ``to_size``.

    wsolevaluation's ``resize_bbox``: every coordinate is multiplied by the ratio of sizes and truncated to an
    integer (coordinates are non-negative, so this is the floor).
    """
    scale = np.tile(np.asarray(to_size, dtype=np.float64) / np.asarray(from_size, dtype=np.float64), 2)
    return np.floor(np.asarray(box, dtype=np.float64) * scale).astype(np.int32)


MAX_BOXES_FILL = -1


def pad_boxes(boxes: list[np.ndarray]) -> np.ndarray:
    """A list of (n_i, 4) boxes as one (len, max n_i, 4) array padded with -1."""
    n = max([len(b) for b in boxes] + [1])
    out = np.full((len(boxes), n, 4), MAX_BOXES_FILL, np.int32)
    for i, b in enumerate(boxes):
        out[i, : len(b)] = b
    return out


def unpad_boxes(padded: np.ndarray) -> list[np.ndarray]:
    return [b[b[:, 0] != MAX_BOXES_FILL] for b in padded]
