"""Tests of the embedded clutter_shapes benchmark: rendering, the TFDS builder and its loader."""

import zlib

import ml_collections
import numpy as np
import pytest
from skimage import draw

import eval.datasets
from eval.datasets import clutter_shapes, embedded
from eval.errors import ConfigError


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


# (size, split, index): label, box, crc32 of the image bytes and of the packed mask, rendered before the plain
# config existed; other results depend on the default and tiny examples staying byte-identical.
_RENDERS = {
    (64, "train", 0): (8, (18, 37, 37, 59), 2536750145, 3785585804),
    (64, "train", 7): (9, (27, 15, 62, 50), 71113145, 3137611637),
    (64, "validation", 0): (5, (17, 10, 56, 47), 2186194382, 3426344596),
    (64, "validation", 1234): (3, (30, 27, 59, 56), 813284947, 4111679570),
    (32, "train", 3): (7, (8, 6, 23, 20), 3701373010, 2051576411),
    (32, "validation", 31): (1, (12, 15, 22, 26), 2892008444, 2959148790),
}


@pytest.mark.parametrize("key", list(_RENDERS))
def test_default_and_tiny_renders_are_unchanged(key):
    example = clutter_shapes.render(key[0], 0, *key[1:])
    got = (example["label"], tuple(int(v) for v in example["box"]), zlib.crc32(example["image"].tobytes()),
           zlib.crc32(np.packbits(example["mask"]).tobytes()))
    assert got == _RENDERS[key]


def test_plain_render_is_deterministic_per_seed_split_and_index():
    first, again = (clutter_shapes.render(64, 7, "train", 3, clutter=False) for _ in range(2))
    for key in ("image", "mask", "box"):
        np.testing.assert_array_equal(first[key], again[key])
    assert first["label"] == again["label"]
    for other in [(64, 8, "train", 3), (64, 7, "validation", 3), (64, 7, "train", 4)]:
        assert not np.array_equal(clutter_shapes.render(*other, clutter=False)["image"], first["image"])


def _background_and_noise_only_around_the_object(example, index):
    """Whether the image outside the object is exactly its smooth background plus its noise, the background being
    the smooth field that the generator of validation example ``index`` draws right after the label (recomputed)."""
    rng = clutter_shapes.example_rng(0, "validation", index)
    rng.integers(len(clutter_shapes.CLASS_NAMES))
    np.testing.assert_array_equal(example["background"], clutter_shapes._smooth_field(rng, 64))
    expected = np.clip((example["background"] + example["noise"]) * 255 + 0.5, 0, 255).astype(np.uint8)
    outside = ~example["mask"]
    return np.array_equal(example["image"][outside], expected[outside])


def test_plain_images_have_no_clutter():
    for index in range(10):
        plain = clutter_shapes.render(64, 0, "validation", index, clutter=False)
        cluttered = clutter_shapes.render(64, 0, "validation", index)
        assert _background_and_noise_only_around_the_object(plain, index)
        assert not _background_and_noise_only_around_the_object(cluttered, index)  # the check sees clutter


def test_plain_is_the_default_example_without_its_clutter():
    for index in range(10):
        plain = clutter_shapes.render(64, 0, "train", index, clutter=False)
        cluttered = clutter_shapes.render(64, 0, "train", index)
        assert plain["label"] == cluttered["label"]
        for key in ("mask", "box", "background", "noise"):
            np.testing.assert_array_equal(plain[key], cluttered[key])
        assert not np.array_equal(plain["image"], cluttered["image"])
        assert plain["box"].dtype == np.int32
        np.testing.assert_array_equal(plain["box"], _reference_box(plain["mask"]))
        pixels = plain["image"][plain["mask"]].astype(float)
        assert pixels.std(0).max() < 0.06 * 255 + 1


def test_builder_lists_plain():
    configs = {c.name: c for c in clutter_shapes.ClutterShapes.BUILDER_CONFIGS}
    assert sorted(configs) == ["default", "plain", "tiny"]
    plain, default = configs["plain"], configs["default"]
    assert not plain.clutter and default.clutter and configs["tiny"].clutter
    assert (plain.image_size, plain.num_train, plain.num_validation, plain.seed) == (64, 20000, 2000, 0)
    assert (default.image_size, default.num_train, default.num_validation, default.seed) == (64, 20000, 2000, 0)


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


def _assert_stores_renders(dataset_builder, size, num_validation, clutter=True):
    assert dataset_builder.info.features["label"].names == list(clutter_shapes.CLASS_NAMES)
    records = list(dataset_builder.as_dataset(split="validation").as_numpy_iterator())
    assert len(records) == num_validation
    for index, record in enumerate(records):
        example = clutter_shapes.render(size, 0, "validation", index, clutter)
        np.testing.assert_array_equal(record["image"], example["image"])
        np.testing.assert_array_equal(record["mask"][..., 0], example["mask"] * 255)
        assert record["label"] == example["label"]
        assert record["objects"]["bbox"].shape == (1, 4)
        np.testing.assert_array_equal(
            clutter_shapes.pixel_boxes(record["objects"]["bbox"], size, size)[0],
            _reference_box(record["mask"][..., 0] == 255))


def test_tiny_dataset_stores_the_renders(tiny_config):
    dataset_builder = embedded.builder(tiny_config)
    assert dataset_builder.info.splits["train"].num_examples == 64
    _assert_stores_renders(dataset_builder, 32, 32)


def test_a_config_without_clutter_stores_plain_renders(tmp_path):
    config = clutter_shapes.ClutterShapesConfig(
        name="small_plain", image_size=32, num_train=2, num_validation=4, clutter=False)
    dataset_builder = clutter_shapes.ClutterShapes(config=config, data_dir=str(tmp_path))
    dataset_builder.download_and_prepare()
    _assert_stores_renders(dataset_builder, 32, 4, clutter=False)
    image = next(dataset_builder.as_dataset(split="validation").as_numpy_iterator())["image"]
    assert not np.array_equal(image, clutter_shapes.render(32, 0, "validation", 0)["image"])


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


@pytest.mark.parametrize("split,message", [
    ("validation[40:50]", "'validation[40:50]' goes beyond the end of its split"),
    ("validation[10:5]", "'validation[10:5]' selects no example"),
    ("validation[32:]", "'validation[32:]' selects no example"),
    ("valid[:8]", "'valid[:8]' names the unknown split 'valid'"),
    ("validation[:8", "'validation[:8' is not a TFDS split spec"),
])
def test_check_split_refuses_what_selects_no_examples(tiny_config, split, message):
    with pytest.raises(ConfigError) as e:
        eval.datasets.check_split(tiny_config, split, "data.eval_split")
    text = str(e.value)
    assert text.startswith(f"config.data.eval_split: {message}") and "\n" not in text
    if "TFDS" not in text:
        assert "64 examples in train, 32 examples in validation" in text


def test_check_split_accepts_slices_within_the_data(tiny_config):
    for split in ("validation[8:24]", "validation", "train[:10%]+validation[-4:]", "all"):
        eval.datasets.check_split(tiny_config, split, "data.eval_split")


def test_check_split_of_other_datasets_checks_the_syntax_only():
    data = ml_collections.ConfigDict({"name": "imagenet2012", "manual_dir": "/nowhere"})
    eval.datasets.check_split(data, "validation[5000:6000]", "data.tune_split")
    with pytest.raises(ConfigError, match=r"^config.data.tune_split: 'validation\[:' is not a TFDS split spec"):
        eval.datasets.check_split(data, "validation[:", "data.tune_split")
