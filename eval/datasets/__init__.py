"""Datasets for weak localisation, each read into one kind of example.

An example is a dict of numpy values:
  image:           uint8 (H, W, 3), the image at the size the model sees (after resize or crop);
  label:           int, the ground-truth class (-1 when unknown);
  boxes:           int32 (n, 4), ground-truth boxes in pixels of ``image``, inclusive (ymin, xmin, ymax, xmax);
                   n = 0 when the image has no boxes (it is then explained but not scored);
  boxes_original:  int32 (n, 4), the same boxes in pixels of the original image;
  original_size:   (H0, W0) of the original image;
  image_id:        str, unique within the dataset (the file name where there is one).
Loaders yield examples in a fixed order, so that a resumed run sees the same images in the same batches.
"""

import importlib

_LOADERS = {
    "clutter_shapes": "eval.datasets.embedded",
    "imagenet2012": "eval.datasets.ilsvrc",
    "caltech_birds2011": "eval.datasets.cub",
    "folder": "eval.datasets.folder",
}


def load(data_config, split: str, rows=None):
    """``(iterator of examples, number of examples)`` of ``split`` of the dataset ``data_config.name``; with
    ``rows`` (increasing positions in ``split``) only those examples, the others neither read nor decoded."""
    if data_config.name not in _LOADERS:
        raise ValueError(f"config.data.name: unknown dataset {data_config.name!r}; known: {sorted(_LOADERS)}")
    return importlib.import_module(_LOADERS[data_config.name]).load(data_config, split, rows)
