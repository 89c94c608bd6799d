"""Datasets for weak localisation, each read into one kind of example, yielded in a fixed order (so that a resumed
run sees the same images in the same batches). An example is a dict of numpy values:
  image uint8 (H, W, 3) at the size the model sees (after resize or crop); label int, the true class (-1 when unknown);
  boxes int32 (n, 4), ground-truth boxes in pixels of ``image``, inclusive (ymin, xmin, ymax, xmax), n = 0 when the
  image has no boxes (it is then explained but not scored); boxes_original the same boxes in pixels of the original
  image, of size original_size (H0, W0); image_id str, unique within the dataset (the file name where there is one).
"""

import importlib

import ml_collections

from eval.errors import ConfigError

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


def check_builder_config(data_config) -> None:
    """Raises ``ConfigError`` on ``config.data.builder_config`` when it is set for a dataset without builder configs
    (all but clutter_shapes) or names none of ``clutter_shapes.ClutterShapes``'s (empty means 'default')."""

    value = data_config.get("builder_config") or ""
    if data_config.name != "clutter_shapes":
        if value:
            raise ConfigError(f"config.data.builder_config: {data_config.name} has no builder configs, got {value!r}; "
                              "leave it empty (--config.data.builder_config=)")
        return
    from eval.datasets import clutter_shapes  # noqa: PLC0415

    known = [c.name for c in clutter_shapes.ClutterShapes.BUILDER_CONFIGS]
    if value and value not in known:
        raise ConfigError(f"config.data.builder_config: clutter_shapes has no config {value!r}; use one of {known}")


def check_split(data_config, split: str, field: str) -> None:
    """Raises a one-line ``ConfigError`` on ``config.<field>`` when the TFDS split spec ``split`` is malformed or,
    for clutter_shapes (its data prepared here when missing), names an unknown split, slices beyond a split's end
    or selects no example. Other datasets are not read here: only the syntax is checked."""
    import tensorflow_datasets as tfds  # noqa: PLC0415

    from eval.datasets import embedded, splits  # noqa: PLC0415

    try:
        spec = tfds.core.ReadInstruction.from_spec(split)
    except (ValueError, NotImplementedError):
        raise ConfigError(f"config.{field}: {split!r} is not a TFDS split spec; write e.g. 'validation[1000:1500]', "
                          "'validation[:10%]' or 'train[:100]+validation' ('all' takes no slice)") from None
    if data_config.name != "clutter_shapes":
        return
    dataset_builder = embedded.builder(data_config)
    infos = dataset_builder.info.splits
    sizes = {name: infos[name].num_examples for name in infos}
    where = (f"clutter_shapes/{dataset_builder.builder_config.name} has "
             + ", ".join(f"{n} examples in {name}" for name, n in sizes.items()))
    names = splits.split_names(split)
    unknown = [n for n in names if n not in sizes and n != "all"]
    if unknown:
        raise ConfigError(f"config.{field}: {split!r} names the unknown split {unknown[0]!r} ({where}); use one of "
                          "those names")
    try:
        count = sum(len(range(sizes[ins.splitname])[slice(ins.from_, ins.to)]) for ins in spec.to_absolute(infos))
    except ValueError:  # TFDS refuses a slice bound beyond the split's size
        count = None
    if not count:
        what = "goes beyond the end of its split" if count is None else "selects no example"
        example = next((n for n in names if n in sizes), next(iter(sizes)))
        raise ConfigError(f"config.{field}: {split!r} {what} ({where}); give a non-empty slice within them, e.g. "
                          f"'{example}[:{sizes[example]}]'")


def data_config() -> ml_collections.ConfigDict:
    """The ``data`` group both jobs start from: the embedded benchmark, its tuning and evaluation images."""
    d = ml_collections.ConfigDict()
    d.name = "clutter_shapes"
    d.builder_config = "default"
    d.data_dir = ""  # TFDS data_dir; empty means TFDS's default (~/tensorflow_datasets).
    d.manual_dir = ""
    d.boxes = ""
    d.folder = ""
    d.image_size = 64
    d.resize = "squash"
    d.order = "file_name"
    d.eval_resolution = "model"
    # The tuning images pick each strategy's threshold; the evaluation images report it (never the same images).
    d.tune_split = "validation[:200]"
    d.eval_split = "validation[1000:1500]"
    return d
