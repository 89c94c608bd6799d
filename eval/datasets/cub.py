"""CUB-200-2011 (TFDS ``caltech_birds2011``: 200 classes, one box per image) through ``preprocess``.

Splits 'train' and 'test', in TFDS's stored order (fixed once the dataset is prepared). ``data_config.data_dir`` is
the TFDS data_dir (TFDS downloads and prepares the dataset there on first use); ``image_size`` and ``resize`` as in
``preprocess``. An image that does not decode yields ``preprocess.skipped``.
"""

import itertools

import tensorflow_datasets as tfds

from eval.datasets import preprocess, splits

NAME = "caltech_birds2011"


def load(data_config, split: str, rows=None):
    """(iterator of examples, number of examples) of ``split`` (``rows``: see ``eval.datasets.load``)."""
    preprocess.check_mode(data_config.resize)
    if rows is not None:
        split = splits.pick(split, rows, tfds.builder(NAME, data_dir=data_config.data_dir).info.splits)
        if not split:
            return iter(()), 0
    # Images are taken encoded (``SkipDecoding``) and decoded with PIL like every other loader.
    ds = tfds.load(NAME, split=split, data_dir=data_config.data_dir, shuffle_files=False,
                   decoders={"image": tfds.decode.SkipDecoding(), "segmentation_mask": tfds.decode.SkipDecoding()})
    num = int(ds.cardinality())
    if num < 0:
        raise ValueError(f"{NAME} split {split!r}: TFDS reports no example count")
    return _examples(data_config, ds, num), num


def _examples(data_config, ds, num: int):
    for ex in itertools.islice(tfds.as_numpy(ds), num):  # never asks for the end of the sequence: see embedded.py
        image_id, label = ex["image/filename"].decode(), int(ex["label"])
        try:
            image = preprocess.decode(ex["image"])
        except preprocess.DECODE_ERRORS as e:
            yield preprocess.skipped(image_id, label, f"cannot decode {image_id} of {NAME}: {e}")
            continue
        # TFDS stores the box from CUB's ``bounding_boxes.txt`` (x, y, width, height) normalised as
        # (y, x, y + height, x + width) / (H, W); it comes back as inclusive pixels
        # round(ymin * H) .. round(ymax * H) - 1.
        boxes = preprocess.normalised_to_pixels(ex["bbox"], *image.shape[:2])
        yield preprocess.make_example(image, boxes, label, image_id, data_config.image_size, data_config.resize)
