"""Tests of the embedded clutter_shapes benchmark: rendering, the TFDS builder and its loader."""

import ml_collections
import numpy as np
import pytest
from skimage import draw

from eval.datasets import clutter_shapes, embedded


def _reference_box(mask):
    rows, cols = np.nonzero(mask)
    return np.array([rows.min(), cols.min(), rows.max(), cols.max()])


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """Data config of the tiny variant, prepared in a fresh data_dir."""
    config = ml_collections.ConfigDict({
        "name": "clutter_shapes",
        "builder_config": "tiny",
        "data_dir": str(tmp_path_factory.mktemp("tfds")),
    })
    embedded.builder(config)
    return config


def test_render_is_deterministic_per_seed_split_and_index():
    first, again = clutter_shapes.render(64, 7, "train", 3), clutter_shapes.render(64, 7, "train", 3)
    for key in ("image", "mask", "box"):
        np.testing.assert_array_equal(first[key], again[key])
    assert first["label"] == again["label"]
    for other in [(64, 8, "train", 3), (64, 7, "validation", 3), (64, 7, "train", 4)]:
        assert not np.array_equal(clutter_shapes.render(*other)["image"], first["image"])


@pytest.mark.parametrize("size", [32, 64])
def test_box_is_the_tight_box_of_the_mask_with_sides_in_range(size):
    low, high = np.ceil(0.25 * size), np.floor(0.70 * size)
    sides = []
    for index in range(150):
        example = clutter_shapes.render(size, 0, "train", index)
        box = example["box"]
        assert box.dtype == np.int32 and box.shape == (4,)
        np.testing.assert_array_equal(box, _reference_box(example["mask"]))
        sides.append(box[2:] - box[:2] + 1)
    sides = np.array(sides)
    assert sides.min() >= low and sides.max() <= high
    assert sides.min() <= low + 3 and sides.max() >= high - 3


def test_all_classes_appear_in_a_few_hundred_renders():
    labels = [clutter_shapes.render(32, 0, "train", index)["label"] for index in range(300)]
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.min() >= 15
    assert len(clutter_shapes.CLASS_NAMES) == 10


def test_object_is_drawn_last_in_one_flat_colour():
    for index in range(20):
        example = clutter_shapes.render(64, 0, "validation", index)
        pixels = example["image"][example["mask"]].astype(float)
        assert pixels.std(0).max() < 0.06 * 255 + 1


def test_every_image_has_five_to_nine_clutter_items():
    for index in range(30):
        rng = clutter_shapes.example_rng(0, "train", index)
        masks = clutter_shapes._clutter(rng, 64)
        assert 5 <= masks.shape[0] <= 9
        assert masks.reshape(masks.shape[0], -1).any(1).sum() >= 4


def test_polygon_rasterisation_matches_skimage():
    rng = np.random.default_rng(0)
    polygons = rng.uniform(-5, 37, (6, 9, 2))
    masks = clutter_shapes._polygon_masks(polygons, 32)
    for polygon, mask in zip(polygons, masks):
        expected = np.zeros((32, 32), bool)
        expected[draw.polygon(polygon[:, 0], polygon[:, 1], (32, 32))] = True
        np.testing.assert_array_equal(mask, expected)
        assert 0 < mask.sum() < 32 * 32


def test_normalised_boxes_round_trip_to_pixels():
    boxes = np.array([[0, 0, 63, 63], [5, 17, 20, 40], [47, 3, 47, 3]], np.int32)
    normalised = [list(clutter_shapes.normalised_box(box, 64)) for box in boxes]
    np.testing.assert_allclose(normalised[0], [0, 0, 1, 1])
    np.testing.assert_allclose(normalised[1], [5 / 64, 17 / 64, 21 / 64, 41 / 64])
    np.testing.assert_array_equal(clutter_shapes.pixel_boxes(normalised, 64, 64), boxes)


def test_tiny_dataset_stores_the_renders(tiny_config):
    dataset_builder = embedded.builder(tiny_config)
    assert dataset_builder.info.splits["train"].num_examples == 64
    assert dataset_builder.info.features["label"].names == list(clutter_shapes.CLASS_NAMES)
    records = list(dataset_builder.as_dataset(split="validation").as_numpy_iterator())
    assert len(records) == 32
    for index, record in enumerate(records):
        example = clutter_shapes.render(32, 0, "validation", index)
        np.testing.assert_array_equal(record["image"], example["image"])
        np.testing.assert_array_equal(record["mask"][..., 0], example["mask"] * 255)
        assert record["label"] == example["label"]
        assert record["objects"]["bbox"].shape == (1, 4)
        np.testing.assert_array_equal(
            clutter_shapes.pixel_boxes(record["objects"]["bbox"], 32, 32)[0],
            _reference_box(record["mask"][..., 0] == 255))


def test_load_yields_contract_examples(tiny_config):
    examples, num_examples = embedded.load(tiny_config, "validation[8:]")
    examples = list(examples)
    assert num_examples == len(examples) == 24
    assert [example["image_id"] for example in examples[:2]] == ["validation_00008", "validation_00009"]
    for offset, example in enumerate(examples):
        rendered = clutter_shapes.render(32, 0, "validation", 8 + offset)
        assert example["image"].dtype == np.uint8 and example["image"].shape == (32, 32, 3)
        np.testing.assert_array_equal(example["image"], rendered["image"])
        assert type(example["label"]) is int and example["label"] == rendered["label"]
        assert example["boxes"].dtype == np.int32 and example["boxes"].shape == (1, 4)
        np.testing.assert_array_equal(example["boxes"][0], _reference_box(rendered["mask"]))
        np.testing.assert_array_equal(example["boxes_original"], example["boxes"])
        assert example["original_size"] == (32, 32)


def test_load_never_asks_tf_data_for_the_end_of_the_split(tiny_config, monkeypatch):
    """Reaching tf.data's end of sequence took seconds after the last batch: the iterator stops at the count."""
    real = embedded.tfds.as_numpy

    def strict(dataset):
        yield from real(dataset)
        raise AssertionError("asked for the end of the sequence")

    monkeypatch.setattr(embedded.tfds, "as_numpy", strict)
    examples, num_examples = embedded.load(tiny_config, "validation[8:]")
    assert len(list(examples)) == num_examples > 0


def test_load_reads_only_the_rows_asked_for(tiny_config):
    full = list(embedded.load(tiny_config, "validation[8:]")[0])
    rows = [0, 1, 5, len(full) - 1]
    examples, num = embedded.load(tiny_config, "validation[8:]", rows)
    got = list(examples)
    assert num == len(got) == 4 and [ex["image_id"] for ex in got] == [full[r]["image_id"] for r in rows]
    np.testing.assert_array_equal(got[2]["image"], full[5]["image"])
    assert embedded.load(tiny_config, "validation[8:]", [])[1] == 0


def test_load_does_not_prepare_again(tiny_config, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("download_and_prepare called on prepared data")

    monkeypatch.setattr(clutter_shapes.ClutterShapes, "download_and_prepare", fail)
    _, num_examples = embedded.load(tiny_config, "train")
    assert num_examples == 64


def test_load_rejects_other_datasets(tiny_config):
    with pytest.raises(ValueError):
        embedded.load(ml_collections.ConfigDict({"name": "imagenet"}), "validation")


def test_tf_dataset_batches_and_shuffles_deterministically(tiny_config):
    ordered = list(embedded.tf_dataset(tiny_config, "train", 16).as_numpy_iterator())
    assert len(ordered) == 4
    images, labels = ordered[0]
    assert images.dtype == np.uint8 and images.shape == (16, 32, 32, 3)
    assert labels.dtype == np.int32 and labels.shape == (16,)
    labels = np.concatenate([batch[1] for batch in ordered])
    expected = [clutter_shapes.render(32, 0, "train", index)["label"] for index in range(64)]
    np.testing.assert_array_equal(labels, expected)
    shuffled = [
        np.concatenate([batch[1] for batch in embedded.tf_dataset(
            tiny_config, "train", 16, shuffle_seed=3).as_numpy_iterator()])
        for _ in range(2)
    ]
    np.testing.assert_array_equal(shuffled[0], shuffled[1])
    np.testing.assert_array_equal(np.sort(shuffled[0]), np.sort(labels))
    assert not np.array_equal(shuffled[0], labels)
    last = list(embedded.tf_dataset(tiny_config, "validation", 10, drop_remainder=True))
    assert len(last) == 3
