"""The embedded clutter_shapes benchmark, generated locally on first use, read as contract examples.

``data_config`` is an ml_collections ConfigDict with ``name`` ('clutter_shapes'), ``builder_config`` (a config
name of ``clutter_shapes.ClutterShapes``; empty or missing means 'default') and ``data_dir`` (the TFDS data
directory; empty, None or missing means TFDS's default).  TensorFlow only serves tf.data here: importing this module
hides the GPUs from it.
"""

import itertools

import tensorflow as tf
import tensorflow_datasets as tfds

from eval.datasets import clutter_shapes, splits

tf.config.set_visible_devices([], "GPU")

_SHUFFLE_BUFFER = 8192


def builder(data_config):
    """The prepared ``ClutterShapes`` builder of ``data_config``, generating the data if missing."""
    if data_config.name != "clutter_shapes":
        raise ValueError(f"not an embedded dataset: {data_config.name!r}")
    dataset_builder = clutter_shapes.ClutterShapes(
        config=data_config.get("builder_config") or "default",
        data_dir=data_config.get("data_dir") or None)
    if not dataset_builder.is_prepared():
        dataset_builder.download_and_prepare()
    return dataset_builder


def _example(record):
    """A TFDS record (numpy) as a contract example; boxes are inclusive pixel boxes, int32."""
    image = record["image"]
    height, width = image.shape[:2]
    boxes = clutter_shapes.pixel_boxes(record["objects"]["bbox"], height, width)
    return {
        "image": image,
        "label": int(record["label"]),
        "boxes": boxes,
        "boxes_original": boxes.copy(),
        "original_size": (height, width),
        "image_id": record["image_id"].decode(),
    }


def load(data_config, split, rows=None):
    """(iterator of contract examples of ``split``, in index order, number of examples).

    ``split`` is any TFDS split spec, e.g. 'validation[1000:]'; ``image_id`` keeps the index within
    the whole split ('validation_01000' is the first example of 'validation[1000:]'). ``rows``: see
    ``eval.datasets.load``.
    """
    dataset_builder = builder(data_config)
    if rows is not None:
        split = splits.pick(split, rows, dataset_builder.info.splits)
        if not split:
            return iter(()), 0
    dataset = dataset_builder.as_dataset(
        split=split, shuffle_files=False, decoders={"mask": tfds.decode.SkipDecoding()})
    num_examples = dataset_builder.info.splits[split].num_examples
    # islice: the iterator stops at the last example without asking tf.data for the end of the sequence, which took
    # 3-10 s (and up to 45 s on a loaded machine) after the last batch (BENCHMARKS.md, "The padded last batch").
    return map(_example, itertools.islice(tfds.as_numpy(dataset), num_examples)), num_examples


def tf_dataset(data_config, split, batch_size, shuffle_seed=None, drop_remainder=False):
    """Batches (image uint8 (B, H, W, 3), label int32 (B,)) of ``split`` for classifier training.

    With ``shuffle_seed``, examples are shuffled (buffer of up to 8192 still-encoded images)
    deterministically, differently at each pass; the dataset does not repeat.
    """
    dataset_builder = builder(data_config)
    dataset = dataset_builder.as_dataset(
        split=split, shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()})
    dataset = dataset.map(lambda record: (record["image"], tf.cast(record["label"], tf.int32)))
    if shuffle_seed is not None:
        buffer = min(_SHUFFLE_BUFFER, dataset_builder.info.splits[split].num_examples)
        dataset = dataset.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
    image_feature = dataset_builder.info.features["image"]
    dataset = dataset.map(
        lambda image, label: (image_feature.decode_example(image), label),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
