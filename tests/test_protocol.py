"""Sweeps, tuning, MaxBoxAcc and baselines of eval.protocol, on constructed maps with hand-computed answers."""

import numpy as np
import pytest
from scipy import ndimage

from eval import boxes, protocol


def _pyramid():
    """17x17 map 8 - d, d the Chebyshev distance to the centre (8, 8): thresholds cut centred squares."""
    y, x = np.mgrid[:17, :17]
    return 8.0 - np.maximum(abs(y - 8), abs(x - 8))


# 'value' keeps 8 - d >= 8 * alpha, i.e. d <= 8 - 8 * alpha: squares of sides 17, 13, 9, 5.
VALUE_ALPHAS = {'value': np.array([0.0, 0.25, 0.5, 0.75])}
GT_13 = np.array([[2, 2, 14, 14]])
GT_9 = np.array([[4, 4, 12, 12]])
GT_5 = np.array([[6, 6, 10, 10]])


def test_alpha_grids():
    np.testing.assert_allclose(protocol.ALPHAS['mean'], np.arange(21) * 0.5)
    assert protocol.ALPHAS['mean'][-1] == 10.0
    for strategy in ('value', 'energy'):
        np.testing.assert_allclose(protocol.ALPHAS[strategy], np.arange(20) * 0.05)
        assert protocol.ALPHAS[strategy][-1] == 0.95


def test_sweep_iou_hand_values():
    ious = protocol.sweep_iou([_pyramid()] * 3, [GT_9, GT_5, np.concatenate([GT_5, GT_13])], strategies=('value',),
                              alphas=VALUE_ALPHAS)
    # nested centred squares: IoU = (small side / large side) ** 2
    np.testing.assert_allclose(ious['value'], [[81 / 289, 81 / 169, 1, 25 / 81],
                                               [25 / 289, 25 / 169, 25 / 81, 1],
                                               [169 / 289, 1, 81 / 169, 1]])


def test_sweep_tune_and_evaluate_chooses_on_tune_and_reports_eval():
    tune = protocol.sweep([_pyramid()] * 5, [GT_9] * 3 + [GT_5] * 2, strategies=('value',), alphas=VALUE_ALPHAS)
    evaluation = protocol.sweep([_pyramid()] * 4, [GT_9] + [GT_5] * 3, strategies=('value',), alphas=VALUE_ALPHAS)
    np.testing.assert_array_equal(tune['value'].mean(axis=0), [0, 0, 0.6, 0.4])
    result = protocol.tune_and_evaluate(tune, evaluation, alphas=VALUE_ALPHAS)
    # tuning picks 0.5 (3 of 5); on eval only 1 of 4 succeeds there (tuning on eval would pick 0.75, error 0.25)
    assert result['value']['alpha'] == 0.5
    assert result['value']['alpha_index'] == 2
    assert result['value']['tune_accuracy'] == pytest.approx(0.6)
    assert result['value']['eval_error'] == pytest.approx(0.75)
    assert (result['value']['num_tune'], result['value']['num_eval']) == (5, 4)
    assert result['best']['strategy'] == 'value'


def test_tune_ties_go_to_smallest_alpha_and_earliest_strategy():
    alphas = {'mean': np.array([0.0, 0.5, 1.0]), 'value': np.array([0.1, 0.2]), 'energy': np.array([0.3, 0.4])}
    tune = {
        'mean': np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], bool),   # 2, 2, 1: tie -> alpha 0
        'value': np.array([[0, 1], [0, 1], [1, 1], [0, 0]], bool),              # 1, 3 -> alpha 0.2
        'energy': np.array([[0, 1], [0, 1], [1, 1], [0, 0]], bool),             # same as value -> value wins
    }
    evaluation = {
        'mean': np.array([[0, 1, 1], [0, 1, 1]], bool),
        'value': np.array([[1, 0], [1, 1], [0, 0]], bool),
        'energy': np.array([[1, 1], [1, 1], [1, 1]], bool),
    }
    result = protocol.tune_and_evaluate(tune, evaluation, alphas=alphas)
    assert (result['mean']['alpha'], result['mean']['tune_accuracy'], result['mean']['eval_error']) == (0.0, 0.5, 1.0)
    assert result['value']['alpha'] == 0.2 and result['value']['tune_accuracy'] == 0.75
    assert result['value']['eval_error'] == pytest.approx(2 / 3)
    assert result['energy']['eval_error'] == 0.0
    # chosen on tuning: value (tied with energy, earlier); energy's better eval error is not looked at
    assert result['best']['strategy'] == 'value'
    assert result['best']['eval_error'] == pytest.approx(2 / 3)


def test_sweep_matches_the_single_map_path():
    rng = np.random.default_rng(3)
    maps = [ndimage.gaussian_filter(rng.random((24, 20)), 2) ** 2 for _ in range(4)]
    gts = [np.array([[3, 4, 15, 12]]), np.array([[0, 0, 10, 9], [12, 8, 23, 19]]), np.array([[5, 5, 18, 14]]),
           np.array([[2, 10, 20, 19]])]
    for largest_component in (True, False):
        ious = protocol.sweep_iou(maps, gts, largest_component=largest_component)
        for strategy, alphas in protocol.ALPHAS.items():
            expected = [[boxes.best_iou(boxes.mask_to_box(boxes.threshold(s, strategy, a), largest_component), gt)
                         for a in alphas] for s, gt in zip(maps, gts)]
            np.testing.assert_allclose(ious[strategy], expected)


def test_sweep_rejects_unscored_images():
    with pytest.raises(ValueError, match='no ground-truth box'):
        protocol.sweep([_pyramid()], [np.zeros((0, 4), np.int32)])
    with pytest.raises(ValueError, match='strategy'):
        protocol.sweep([_pyramid()], [GT_9], strategies=('median',))


def test_max_box_acc_on_pyramids():
    # Normalised map (8 - d) / 8 > t keeps d < 8 - 8t: squares of sides 15, 13, ..., 1 as t grows.
    # GT side 9 succeeds at IoU 0.5 for sides 7, 9, 11 and at 0.7 for 9 only; GT side 5 for sides 5, 7 and 5 only.
    # Side 7 (0.5 <= t < 0.625) serves both at 0.5; at 0.7 one image at most; at 0.3 side 9 (0.375 <= t < 0.5) both.
    result = protocol.max_box_acc([_pyramid(), _pyramid()], [GT_9, GT_5])
    assert result[0.3] == 1.0 and result[0.5] == 1.0 and result[0.7] == 0.5
    assert result['mean'] == pytest.approx(2.5 / 3)
    assert result['best_threshold'] == pytest.approx({0.3: 0.38, 0.5: 0.5, 0.7: 0.38})


def test_max_box_acc_all_components():
    saliency = np.zeros((20, 20))
    saliency[1:4, 1:4] = 1.0        # the object, first in raster order
    saliency[10:18, 10:18] = 1.0    # the larger component, far from the object
    gt = [np.array([[1, 1, 3, 3]])]
    largest = protocol.max_box_acc([saliency], gt)
    every = protocol.max_box_acc([saliency], gt, all_components=True)
    assert (largest[0.3], largest[0.5], largest[0.7], largest['mean']) == (0.0, 0.0, 0.0, 0.0)
    assert (every[0.3], every[0.5], every[0.7], every['mean']) == (1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize('all_components', [False, True])
def test_max_box_acc_constant_map_is_the_whole_image(all_components):
    whole, corner = [np.array([[0, 0, 3, 5]])], [np.array([[0, 0, 1, 1]])]
    for gt, accuracy in ((whole, 1.0), (corner, 0.0)):
        result = protocol.max_box_acc([np.full((4, 6), 0.3)], gt, iou_thresholds=(0.5,), all_components=all_components)
        assert result[0.5] == accuracy


def test_centred_box_baseline_tunes_on_tune_split():
    # 20x20 images; centred box of side k for fraction 0.05k. GT side 4 (8..11) succeeds for sides 3-5,
    # GT side 16 (2..17) for sides 12-20.
    small, large = np.array([[8, 8, 11, 11]]), np.array([[2, 2, 17, 17]])
    size = (20, 20)
    result = protocol.centred_box_baseline([small, small, large], [size] * 3, [small, large, large], [size] * 3)
    assert result['fraction'] == 0.15
    assert result['tune_accuracy'] == pytest.approx(2 / 3)
    assert result['eval_error'] == pytest.approx(2 / 3)   # tuning on eval would pick 0.6, error 1/3
    assert protocol.whole_image_error([small, large, large], [size] * 3) == pytest.approx(1 / 3)


def test_per_image_results():
    # value alpha 0.5 on the pyramid gives the side-9 box (4, 4, 12, 12); an image without boxes is not scored
    result = protocol.per_image_results([_pyramid()] * 3, [GT_9, GT_13, np.zeros((0, 4))], {'value': 0.5})
    np.testing.assert_array_equal(result['value']['box'], [[4, 4, 12, 12]] * 3)
    np.testing.assert_allclose(result['value']['iou'], [1.0, 81 / 169, np.nan])
    np.testing.assert_array_equal(result['value']['correct'], [True, False, False])
