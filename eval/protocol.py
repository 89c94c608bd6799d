"""Weak-localisation protocol: alpha sweeps, tuning on a held-out split, MaxBoxAcc and trivial baselines.

Fong & Vedaldi (2017): boxes from three thresholding strategies, correct when the best IoU (VOC +1 convention) with
the image's ground-truth boxes is >= 0.5; alpha is chosen on a tuning split and the error is reported on a disjoint
evaluation split. wsolevaluation (Choe et al. 2020): MaxBoxAcc over a sweep of thresholds on min-max normalised maps.
"""

import numpy as np

from eval import boxes as box_ops

IOU_THRESHOLD = 0.5

# The protocol's sweeps. Fong & Vedaldi's own 'mean' sweep stops at 9.5; this one includes 10 (21 values).
ALPHAS = {
    'mean': np.round(np.arange(21) * 0.5, 2),
    'value': np.round(np.arange(20) * 0.05, 2),
    'energy': np.round(np.arange(20) * 0.05, 2),
}

CENTRED_FRACTIONS = np.round(np.arange(1, 21) * 0.05, 2)


# Maps and ground-truth boxes must be in the same pixels (both at the model's input size, or the maps resized with
# ``boxes.resize_map`` to the original size with ``boxes_original``). Images without ground-truth boxes are not
# scored: the sweeps reject them (ValueError), the caller drops them first; ``per_image_results`` accepts them.
# Accuracies and errors are fractions in [0, 1].
def _gt(gt_boxes):
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    if len(gt) == 0:
        raise ValueError('gt_boxes_list: an image has no ground-truth box; pass only scored images')
    return gt


def _check_lengths(saliency_maps, gt_boxes_list):
    if len(saliency_maps) != len(gt_boxes_list):
        raise ValueError(f'gt_boxes_list has {len(gt_boxes_list)} entries for {len(saliency_maps)} saliency maps')


def sweep_iou(saliency_maps, gt_boxes_list, strategies=box_ops.STRATEGIES, largest_component=True, alphas=ALPHAS):
    """Best IoU of each image's box at each alpha: dict strategy -> float array (num_images, len(alphas[strategy])).

    Per map, the masks of every strategy and alpha are labelled in one call (``boxes.masks_to_boxes``).
    """
    _check_lengths(saliency_maps, gt_boxes_list)
    for strategy in strategies:
        box_ops.check_strategy(strategy)
    ious = {strategy: np.empty((len(saliency_maps), len(alphas[strategy]))) for strategy in strategies}
    splits = np.cumsum([len(alphas[strategy]) for strategy in strategies])[:-1]
    for i, (saliency, gt_boxes) in enumerate(zip(saliency_maps, gt_boxes_list)):
        gt = _gt(gt_boxes)
        masks = []
        for strategy in strategies:
            values, cuts = box_ops.strategy_cuts(saliency, strategy, alphas[strategy])
            masks.append(values[None] >= cuts[:, None, None])
        overlaps = box_ops.best_iou(box_ops.masks_to_boxes(np.concatenate(masks), largest_component), gt)
        for strategy, row in zip(strategies, np.split(overlaps, splits)):
            ious[strategy][i] = row
    return ious


def sweep(saliency_maps, gt_boxes_list, strategies=box_ops.STRATEGIES, largest_component=True, alphas=ALPHAS):
    """Localisation success (best IoU >= 0.5): dict strategy -> bool array (num_images, len(alphas[strategy]))."""
    ious = sweep_iou(saliency_maps, gt_boxes_list, strategies, largest_component, alphas)
    return {strategy: overlaps >= IOU_THRESHOLD for strategy, overlaps in ious.items()}


def tune_and_evaluate(success_tune, success_eval, alphas=ALPHAS):
    """Choose alpha per strategy on the tuning split, report the error at that alpha on the evaluation split.

    ``success_tune`` / ``success_eval``: outputs of ``sweep`` on two disjoint sets of images. The alpha with the
    highest tuning accuracy wins, ties going to the smallest alpha; the best strategy is the one with the highest
    tuning accuracy at its alpha, ties going to the earlier strategy in ``success_tune``'s order. Evaluation numbers
    never take part in a choice.

    Returns {strategy: {'alpha', 'alpha_index', 'tune_accuracy', 'tune_error', 'eval_accuracy', 'eval_error',
    'num_tune', 'num_eval'}, ..., 'best': {'strategy', and the same keys}}.
    """
    results = {}
    for strategy, tune in success_tune.items():
        tune = np.asarray(tune, dtype=bool)
        evaluation = np.asarray(success_eval[strategy], dtype=bool)
        if len(tune) == 0 or len(evaluation) == 0:
            raise ValueError(f'success_tune and success_eval need at least one image each for strategy {strategy!r}')
        index = int(np.argmax(tune.sum(axis=0)))
        tune_accuracy = float(tune[:, index].mean())
        eval_accuracy = float(evaluation[:, index].mean())
        results[strategy] = {
            'alpha': float(alphas[strategy][index]),
            'alpha_index': index,
            'tune_accuracy': tune_accuracy,
            'tune_error': 1.0 - tune_accuracy,
            'eval_accuracy': eval_accuracy,
            'eval_error': 1.0 - eval_accuracy,
            'num_tune': len(tune),
            'num_eval': len(evaluation),
        }
    best = max(results, key=lambda strategy: (results[strategy]['tune_accuracy'], -list(results).index(strategy)))
    results['best'] = {'strategy': best, **results[best]}
    return results


def per_image_results(saliency_maps, gt_boxes_list, chosen_alphas, largest_component=True):
    """Predicted box and best IoU per image at the chosen alpha of each strategy (for per-image CSVs).

    ``chosen_alphas``: {strategy: alpha}, e.g. from ``tune_and_evaluate``. Returns {strategy: {'box': int32
    (num_images, 4), 'iou': float (num_images,), 'correct': bool (num_images,)}}; images without ground-truth boxes
    get IoU NaN and correct False.
    """
    _check_lengths(saliency_maps, gt_boxes_list)
    results = {}
    for strategy, alpha in chosen_alphas.items():
        predicted = np.array([box_ops.saliency_boxes(saliency, strategy, alpha, largest_component)[0]
                              for saliency in saliency_maps], dtype=np.int32).reshape(-1, 4)
        overlaps = np.array([box_ops.best_iou(box, np.reshape(gt, (-1, 4)))
                             for box, gt in zip(predicted, gt_boxes_list)], dtype=np.float64)
        results[strategy] = {'box': predicted, 'iou': overlaps, 'correct': overlaps >= IOU_THRESHOLD}
    return results


def _normalise(saliency):
    """Min-max normalisation to [0, 1]; a constant map becomes all zeros (wsolevaluation's ``normalize_scoremap``)."""
    s = np.asarray(saliency, dtype=np.float64)
    low, span = s.min(), s.max() - s.min()
    return (s - low) / span if span > 0 else np.zeros_like(s)


def _best_iou_all_components(masks, gt):
    """Per mask of a stack, the best IoU over the boxes of all its components (empty mask: the whole image)."""
    plane, _, extents = box_ops.component_boxes(masks)
    best = np.full(len(masks), -np.inf)
    np.maximum.at(best, plane, box_ops.best_iou(extents, gt))
    best[np.isneginf(best)] = box_ops.best_iou(box_ops.whole_image_box(masks.shape[1:]), gt)
    return best


def max_box_acc(saliency_maps, gt_boxes_list, iou_thresholds=(0.3, 0.5, 0.7), interval=0.01, all_components=False):
    """wsolevaluation's MaxBoxAcc (Choe et al. 2020): the best dataset-level box accuracy over map thresholds.

    Each map is min-max normalised; at each threshold t of ``np.arange(0, 1, interval)`` the pixels with value > t
    are kept (``interval``: wsolevaluation's ``cam_curve_interval``, 0.01 in its config; ``evaluate_wsol`` uses
    0.001). The box is that of the largest 8-connected component (MaxBoxAcc) or, with ``all_components=True``,
    the best box over all components (MaxBoxAccV2). Per IoU threshold, the accuracy (best IoU >= threshold) is
    maximised over t. Differences from wsolevaluation: it thresholds an 8-bit copy of the map and picks the contour
    of largest polygon area (cv2), and its boxes reach one pixel past the component (``x + w``, clipped); here the
    threshold is on floats, the largest component by pixel count, the box tight and inclusive. A constant map keeps
    nothing and gets the whole image (wsolevaluation: the box (0, 0, 0, 0)).

    Returns {iou_threshold: accuracy, ..., 'mean': mean accuracy over the IoU thresholds,
    'best_threshold': {iou_threshold: the smallest t reaching that accuracy}}.
    """
    _check_lengths(saliency_maps, gt_boxes_list)
    if len(saliency_maps) == 0:
        raise ValueError('saliency_maps: no image to score')
    thresholds = np.arange(0, 1, interval)
    best = np.empty((len(saliency_maps), len(thresholds)))
    for i, (saliency, gt_boxes) in enumerate(zip(saliency_maps, gt_boxes_list)):
        gt = _gt(gt_boxes)
        masks = _normalise(saliency)[None] > thresholds[:, None, None]
        if all_components:
            best[i] = _best_iou_all_components(masks, gt)
        else:
            best[i] = box_ops.best_iou(box_ops.masks_to_boxes(masks), gt)
    results = {'best_threshold': {}}
    for iou_threshold in iou_thresholds:
        accuracy = (best >= iou_threshold).mean(axis=0)
        index = int(np.argmax(accuracy))
        results[iou_threshold] = float(accuracy[index])
        results['best_threshold'][iou_threshold] = float(thresholds[index])
    results['mean'] = float(np.mean([results[iou_threshold] for iou_threshold in iou_thresholds]))
    return results


def _box_accuracy(box_fn, gt_boxes_list, image_sizes):
    _check_lengths(image_sizes, gt_boxes_list)
    return float(np.mean([box_ops.best_iou(box_fn(size), _gt(gt)) >= IOU_THRESHOLD
                          for gt, size in zip(gt_boxes_list, image_sizes)]))


def whole_image_error(gt_boxes_list, image_sizes):
    """Localisation error of predicting the whole image; ``image_sizes``: (H, W) of the pixels of the boxes."""
    return 1.0 - _box_accuracy(box_ops.whole_image_box, gt_boxes_list, image_sizes)


def centred_box_baseline(gt_boxes_tune, image_sizes_tune, gt_boxes_eval, image_sizes_eval,
                         fractions=CENTRED_FRACTIONS):
    """Centred-box baseline: the side fraction (``boxes.centred_box``) chosen on the tuning split, error on eval.

    Ties go to the smallest fraction. Returns {'fraction', 'tune_accuracy', 'tune_error', 'eval_accuracy',
    'eval_error'}.
    """
    tune = [_box_accuracy(lambda size: box_ops.centred_box(size, fraction), gt_boxes_tune, image_sizes_tune)
            for fraction in fractions]
    index = int(np.argmax(tune))
    fraction = float(fractions[index])
    eval_accuracy = _box_accuracy(lambda size: box_ops.centred_box(size, fraction), gt_boxes_eval, image_sizes_eval)
    return {'fraction': fraction, 'tune_accuracy': tune[index], 'tune_error': 1.0 - tune[index],
            'eval_accuracy': eval_accuracy, 'eval_error': 1.0 - eval_accuracy}
