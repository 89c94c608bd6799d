"""Thresholding strategies, component boxes, IoU and box rescaling of eval.boxes, on hand-computed cases."""

import numpy as np
import pytest
from skimage import measure

from eval import boxes


def _kept(mask):
    return sorted(map(tuple, np.argwhere(mask).tolist()))


def _map(entries, shape=(5, 5), background=0.0):
    s = np.full(shape, background)
    for (y, x), value in entries.items():
        s[y, x] = value
    return s


# mean = (4 + 4 + 4 + 8 + 1) / 25 = 0.84
MEAN_MAP = _map({(1, 1): 4, (1, 2): 4, (2, 1): 4, (2, 2): 8, (3, 4): 1})


@pytest.mark.parametrize('alpha, expected', [
    (0.0, [(y, x) for y in range(5) for x in range(5)]),
    (1.0, [(1, 1), (1, 2), (2, 1), (2, 2), (3, 4)]),     # >= 0.84 keeps the 1
    (2.0, [(1, 1), (1, 2), (2, 1), (2, 2)]),             # >= 1.68
    (5.0, [(2, 2)]),                                     # >= 4.2
    (10.0, []),                                          # >= 8.4
])
def test_mean_strategy(alpha, expected):
    assert _kept(boxes.threshold(MEAN_MAP, 'mean', alpha)) == expected


# min 1, max 9: keeps s - 1 >= 8 * alpha
VALUE_MAP = MEAN_MAP + 1


@pytest.mark.parametrize('alpha, expected', [
    (0.0, [(y, x) for y in range(5) for x in range(5)]),
    (0.125, [(1, 1), (1, 2), (2, 1), (2, 2), (3, 4)]),   # s >= 2
    (0.5, [(1, 1), (1, 2), (2, 1), (2, 2)]),             # s >= 5
    (0.9, [(2, 2)]),                                     # s >= 8.2
    (1.0, [(2, 2)]),
])
def test_value_strategy(alpha, expected):
    assert _kept(boxes.threshold(VALUE_MAP, 'value', alpha)) == expected


# total 32; sorted 16, 6, 6, 3, 1, 0...; cumulative 16, 22, 28, 31, 32
ENERGY_MAP = _map({(2, 2): 16, (1, 1): 6, (3, 3): 6, (0, 4): 3, (4, 0): 1})


@pytest.mark.parametrize('alpha, expected', [
    (0.0, [(2, 2)]),                                     # the top pixel alone
    (0.5, [(2, 2)]),                                     # 16 reaches 16 exactly
    (17 / 32, [(1, 1), (2, 2), (3, 3)]),                 # cut at the first 6, its tie kept
    (28 / 32, [(1, 1), (2, 2), (3, 3)]),
    (29 / 32, [(0, 4), (1, 1), (2, 2), (3, 3)]),
    (0.95, [(0, 4), (1, 1), (2, 2), (3, 3)]),            # 30.4 is reached at 31
    (1.0, [(0, 4), (1, 1), (2, 2), (3, 3), (4, 0)]),     # every positive pixel, no zero
])
def test_energy_strategy(alpha, expected):
    assert _kept(boxes.threshold(ENERGY_MAP, 'energy', alpha)) == expected


def test_energy_of_all_zero_map_keeps_everything():
    assert boxes.threshold(np.zeros((3, 4)), 'energy', 0.5).all()


def test_strategy_cuts_match_threshold_for_every_alpha():
    rng = np.random.default_rng(0)
    s = rng.random((7, 9)) ** 3
    alphas = np.linspace(0, 1, 11)
    for strategy in boxes.STRATEGIES:
        values, cuts = boxes.strategy_cuts(s, strategy, alphas)
        for alpha, cut in zip(alphas, cuts):
            np.testing.assert_array_equal(values >= cut, boxes.threshold(s, strategy, alpha))


@pytest.mark.parametrize('strategy, alpha, word', [
    ('median', 0.5, 'strategy'),
    ('mean', -0.5, 'alpha'),
    ('value', np.nan, 'alpha'),
    ('mean', np.inf, 'alpha'),
    ('energy', 1.5, 'alpha'),
])
def test_bad_strategy_or_alpha(strategy, alpha, word):
    with pytest.raises(ValueError, match=word):
        boxes.threshold(ENERGY_MAP, strategy, alpha)


def test_energy_rejects_negative_saliency():
    with pytest.raises(ValueError, match='saliency'):
        boxes.threshold(ENERGY_MAP - 1, 'energy', 0.5)


def _two_blobs():
    mask = np.zeros((6, 8), dtype=bool)
    mask[0:2, 0:2] = True     # 4 pixels
    mask[3:6, 4:7] = True     # 9 pixels
    return mask


def test_largest_component_box():
    np.testing.assert_array_equal(boxes.mask_to_box(_two_blobs()), [3, 4, 5, 6])


def test_without_component_step_boxes_both_blobs():
    np.testing.assert_array_equal(boxes.mask_to_box(_two_blobs(), largest_component=False), [0, 0, 5, 6])


def test_components_are_8_connected():
    mask = np.zeros((6, 8), dtype=bool)
    mask[[0, 1, 2], [0, 1, 2]] = True   # a diagonal: one component of 3 with 8-connectivity, 3 singletons with 4
    mask[5, 5:7] = True
    np.testing.assert_array_equal(boxes.mask_to_box(mask), [0, 0, 2, 2])


def test_equal_components_go_to_first_in_raster_order():
    mask = np.zeros((6, 8), dtype=bool)
    mask[3:5, 0:2] = True
    mask[0:2, 5:7] = True     # same size, first pixel (0, 5) comes before (3, 0)
    np.testing.assert_array_equal(boxes.mask_to_box(mask), [0, 5, 1, 6])


@pytest.mark.parametrize('largest_component', [True, False])
def test_empty_mask_gives_whole_image(largest_component):
    np.testing.assert_array_equal(boxes.mask_to_box(np.zeros((4, 7), bool), largest_component), [0, 0, 3, 6])


def test_stacked_masks_do_not_connect_across_planes():
    masks = np.zeros((2, 5, 5), dtype=bool)
    masks[0, 4, :] = True          # bottom row of plane 0
    masks[0, 0, 0] = True
    masks[1, 0, 1:3] = True        # top row of plane 1, touching plane 0's bottom row in the flat layout
    masks[1, 2:5, 4] = True
    np.testing.assert_array_equal(boxes.masks_to_boxes(masks), [[4, 0, 4, 4], [2, 4, 4, 4]])


def test_component_boxes_agree_with_skimage_label():
    rng = np.random.default_rng(1)
    masks = rng.random((6, 12, 15)) > 0.55
    masks[2] = False
    plane, sizes, extents = boxes.component_boxes(masks)
    for index, mask in enumerate(masks):
        expected = sorted((r.area, r.bbox[0], r.bbox[1], r.bbox[2] - 1, r.bbox[3] - 1)
                          for r in measure.regionprops(measure.label(mask, connectivity=2)))
        got = sorted((int(size), *map(int, box)) for size, box in zip(sizes[plane == index], extents[plane == index]))
        assert got == expected
    assert not np.any(plane == 2)


def test_masks_to_boxes_matches_mask_to_box():
    rng = np.random.default_rng(2)
    masks = rng.random((5, 9, 11)) > 0.6
    for largest_component in (True, False):
        stacked = boxes.masks_to_boxes(masks, largest_component)
        for mask, box in zip(masks, stacked):
            np.testing.assert_array_equal(box, boxes.mask_to_box(mask, largest_component))


def test_saliency_boxes_per_alpha():
    # value strategy on VALUE_MAP: alpha 0 keeps all, 0.125 keeps the blob and the pixel at (3, 4) (separate),
    # 0.5 keeps the 2x2 blob.
    got = boxes.saliency_boxes(VALUE_MAP, 'value', [0.0, 0.125, 0.5])
    np.testing.assert_array_equal(got, [[0, 0, 4, 4], [1, 1, 2, 2], [1, 1, 2, 2]])
    got = boxes.saliency_boxes(VALUE_MAP, 'value', [0.125], largest_component=False)
    np.testing.assert_array_equal(got, [[1, 1, 3, 4]])


def test_iou_identical_disjoint_and_partial():
    a = [0, 0, 9, 9]
    assert boxes.iou(a, [a])[0] == 1.0
    assert boxes.iou(a, [[10, 0, 12, 9]])[0] == 0.0
    # (5..9) x (5..9) = 25 pixels of two 100-pixel boxes: 25 / 175
    assert boxes.iou(a, [[5, 5, 14, 14]])[0] == pytest.approx(1 / 7)
    # touching corners share one pixel under the +1 convention: 1 / (25 + 25 - 1)
    assert boxes.iou([0, 0, 4, 4], [[4, 4, 8, 8]])[0] == pytest.approx(1 / 49)
    # a 2x3 box inside a 4x4 one: 6 / 16
    assert boxes.iou([1, 1, 2, 3], [[0, 0, 3, 3]])[0] == pytest.approx(6 / 16)


def test_iou_is_vectorised_and_best_iou_takes_the_maximum():
    gt = [[10, 0, 12, 9], [5, 5, 14, 14], [0, 0, 9, 9]]
    np.testing.assert_allclose(boxes.iou([0, 0, 9, 9], gt), [0, 1 / 7, 1])
    # (10..12) x (5..9) = 15 pixels of 30 and 100: 15 / 115
    np.testing.assert_allclose(boxes.iou([[0, 0, 9, 9], [5, 5, 14, 14]], gt), [[0, 1 / 7, 1], [15 / 115, 1, 1 / 7]])
    assert boxes.best_iou([5, 5, 14, 14], gt[:2]) == 1.0
    np.testing.assert_allclose(boxes.best_iou([[0, 0, 9, 9], [10, 0, 12, 9]], gt[1:]), [1, 15 / 115])
    assert np.isnan(boxes.best_iou([0, 0, 9, 9], np.zeros((0, 4))))


def test_box_to_size_truncates_like_wsolevaluation():
    # (100, 200) -> (224, 224): y * 2.24, x * 1.12, then floor
    np.testing.assert_array_equal(boxes.box_to_size([10, 20, 99, 199], (100, 200), (224, 224)), [22, 22, 221, 222])
    np.testing.assert_array_equal(boxes.box_to_size([[0, 0, 3, 3], [2, 1, 3, 2]], (4, 4), (2, 8)),
                                  [[0, 0, 1, 6], [1, 2, 1, 4]])


def test_resize_map_is_bilinear_on_pixel_centres():
    expected = [[0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2.0, 2.25, 2.75, 3.0]]
    np.testing.assert_allclose(boxes.resize_map(np.array([[0.0, 1.0], [2.0, 3.0]]), (4, 4)), expected)
    np.testing.assert_allclose(boxes.resize_map(np.arange(16.0).reshape(4, 4), (2, 2)), [[2.5, 4.5], [10.5, 12.5]])


def test_trivial_boxes():
    np.testing.assert_array_equal(boxes.whole_image_box((3, 5)), [0, 0, 2, 4])
    np.testing.assert_array_equal(boxes.centred_box((10, 20), 0.5), [2, 5, 6, 14])
    np.testing.assert_array_equal(boxes.centred_box((10, 20), 1.0), [0, 0, 9, 19])
    np.testing.assert_array_equal(boxes.centred_box((10, 20), 0.05), [4, 9, 4, 9])   # sides round to 0 and 1 -> 1
    with pytest.raises(ValueError, match='fraction'):
        boxes.centred_box((10, 20), 0.0)
