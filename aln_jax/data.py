"""The ALN's training data of one process: images, labels and their SLIC superpixels (paper Sec. 2.2), cached on disk.

Each process reads only its own contiguous shard of the split (``tfds.even_splits``), segments it once and keeps
``images.npy``, ``labels.npy`` and ``segments.npy`` in ``cache_dir/<key>/``; the folder is built aside and renamed
into place with ``complete.json`` inside, so a half-written cache is never read (a folder without the marker is
rebuilt). ``batch_indices`` depends on the step alone, so a resumed run draws the same batches.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tqdm import tqdm

from aln_jax import superpixels
from eval.datasets import embedded

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "perturb_jax", "aln")
_FILES = ("images", "labels", "segments")
_MARKER = "complete.json"
_CHUNK = 1024  # images read, segmented and written at a time.
_IMAGENET_TARS = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}


@dataclasses.dataclass(frozen=True)
class TrainData:
    """One process's training examples: ``images`` uint8 (n, H, W, 3), ``labels`` int32 (n,), ``segments`` uint8
    (n, H, W) superpixel ids; arrays may be read-only memmaps of the cache."""

    images: np.ndarray
    labels: np.ndarray
    segments: np.ndarray


def cache_key(data_config, split: str, image_size: int, slic_config, process_index: int, process_count: int) -> str:
    """The cache folder's name, e.g. 'clutter_shapes-default-train-64px-slic100-c10-s0-m256-p0of1'."""
    split_name = split.replace("[", "_").replace("]", "").replace(":", "-").replace("%", "pct")
    split_name = re.sub(r"[^\w.+-]", "_", split_name)
    s = slic_config
    return (f"{data_config.name}-{data_config.get('builder_config') or 'default'}-{split_name}-{image_size}px-"
            f"slic{s.n_segments}-c{s.compactness:g}-s{s.sigma:g}-m{s.max_segments}-p{process_index}of{process_count}")


def _imagenet_builder(data_config, split: str) -> tfds.core.DatasetBuilder:
    """TFDS ``imagenet2012``, prepared from the user's manual download if it is not yet."""
    builder = tfds.builder("imagenet2012", data_dir=data_config.get("data_dir") or None)
    if not builder.is_prepared():
        manual_dir = data_config.get("manual_dir") or ""
        tar = _IMAGENET_TARS.get(re.split(r"[\[+]", split)[0], _IMAGENET_TARS["train"])
        if not (manual_dir and os.path.isfile(os.path.join(manual_dir, tar))):
            raise FileNotFoundError(f"config.data.manual_dir: {tar} not found in {manual_dir!r}; download it from "
                                    "image-net.org and set --config.data.manual_dir to its folder")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def _source(data_config, split: str, shard, image_size: int) -> tuple[tf.data.Dataset, int]:
    """(dataset of (image uint8 (S, S, 3), label), number of examples) of ``shard``, in index order."""
    if data_config.name == "clutter_shapes":
        builder = embedded.builder(data_config)
        stored = builder.info.features["image"].shape[0]
        if stored != image_size:
            raise ValueError(f"config.aln.image_size: {image_size}, but clutter_shapes/"
                             f"{data_config.get('builder_config') or 'default'} images are {stored}x{stored}; "
                             f"set --config.aln.image_size={stored}")
        dataset = builder.as_dataset(split=shard, shuffle_files=False,
                                     decoders={"mask": tfds.decode.SkipDecoding()})
        dataset = dataset.map(lambda r: (r["image"], r["label"]))
    elif data_config.name == "imagenet2012":
        builder = _imagenet_builder(data_config, split)
        dataset = builder.as_dataset(split=shard, shuffle_files=False)

        def squash(record):
            image = tf.image.resize(record["image"], (image_size, image_size), antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), record["label"]

        dataset = dataset.map(squash, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        raise ValueError(f"config.data.name: ALN training reads clutter_shapes or imagenet2012, "
                         f"got {data_config.name!r}")
    return dataset, builder.info.splits[shard].num_examples


def _build(path: str, data_config, split: str, shard, image_size: int, slic_config, progress: bool) -> None:
    """Reads ``shard`` of ``split``, segments it and writes the cache folder ``path`` (built aside, then renamed)."""
    dataset, n = _source(data_config, split, shard, image_size)
    partial = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    shapes = {"images": ((n, image_size, image_size, 3), np.uint8), "labels": ((n,), np.int32),
              "segments": ((n, image_size, image_size), np.uint8)}
    arrays = {k: np.lib.format.open_memmap(os.path.join(partial, f"{k}.npy"), "w+", dtype, shape)
              for k, (shape, dtype) in shapes.items()}
    s = slic_config
    workers = int(s.get("workers", 0))
    with (superpixels.process_pool(workers) if workers > 1 else contextlib.nullcontext()) as pool, \
            tqdm(total=n, desc=f"superpixels {os.path.basename(path)}", unit="img", dynamic_ncols=True,
                 disable=not progress) as bar:
        start = 0
        for images, labels in tfds.as_numpy(dataset.batch(_CHUNK).prefetch(1)):
            stop = start + len(labels)
            arrays["images"][start:stop] = images
            arrays["labels"][start:stop] = labels
            arrays["segments"][start:stop] = superpixels.slic_batch(
                images, s.n_segments, s.compactness, s.sigma, s.max_segments, executor=pool)
            start = stop
            bar.update(len(labels))
    for array in arrays.values():
        array.flush()
    del arrays
    with open(os.path.join(partial, _MARKER), "w") as f:
        json.dump({"num_examples": n, "split": split, "shard": repr(shard), "image_size": image_size,
                   "slic": {k: s[k] for k in ("n_segments", "compactness", "sigma", "max_segments")}}, f)
    try:
        os.rename(partial, path)
    except OSError:  # another process finished the same cache first: keep theirs.
        if not os.path.isfile(os.path.join(path, _MARKER)):
            raise
        shutil.rmtree(partial)


def load_train_data(data_config, split: str, image_size: int, slic_config, cache_dir: str, process_index: int = 0,
                    process_count: int = 1, progress: bool = True) -> TrainData:
    """This process's contiguous shard of ``split`` with its superpixels (paper Sec. 2.2), from the cache.

    Builds the cache on first use (``slic_config.workers`` processes segment, a progress bar shows the ETA);
    later calls memory-map it. ``data_config.name`` is 'clutter_shapes' (stored at its size; ``image_size`` must
    match) or 'imagenet2012' (TFDS, prepared from ``data_config.manual_dir``, squash-resized with antialiasing).
    """
    path = os.path.join(cache_dir, cache_key(data_config, split, image_size, slic_config, process_index,
                                             process_count))
    if not os.path.isfile(os.path.join(path, _MARKER)):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(cache_dir, exist_ok=True)
        shard = tfds.even_splits(split, n=process_count)[process_index]
        _build(path, data_config, split, shard, image_size, slic_config, progress)
    return TrainData(*(np.load(os.path.join(path, f"{k}.npy"), mmap_mode="r") for k in _FILES))


def batch_indices(seed: int, step: int, num_local: int, local_batch: int, process_index: int) -> np.ndarray:
    """Rows (int64, (local_batch,)) of this process's data for ``step``: epoch-wise permutations without repeats,
    a function of the arguments alone (a resumed run draws the same batches); the remainder of an epoch is dropped."""
    steps_per_epoch = num_local // local_batch
    if steps_per_epoch == 0:
        raise ValueError(f"config.batch_size: {local_batch} images per process exceed the {num_local} training images "
                         f"of process {process_index}; lower config.batch_size")
    epoch, k = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, process_index, epoch]).permutation(num_local)
    return perm[k * local_batch:(k + 1) * local_batch].astype(np.int64)


def local_batch(data: TrainData, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The examples ``indices`` of ``data``: images uint8 (b, H, W, 3), labels int32 (b,), segments uint8 (b, H, W).

    Rows are read in increasing order (sequential reads of the memmaps), then put back in the order asked.
    """
    rows, back = np.unique(np.asarray(indices), return_inverse=True)
    return {k: np.asarray(getattr(data, k)[rows])[back] for k in _FILES}
