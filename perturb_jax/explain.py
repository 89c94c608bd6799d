"""The main job: explain the tuning and evaluation images, store maps per batch, score them, write the report.

``explain_and_evaluate(config, workdir)`` is what ``python -m perturb_jax.main`` calls. Work is stored batch by batch
(``results_store``); a second run on the same workdir skips finished batches, so an interrupted run resumes and
gives identical numbers. The batch is sharded over every device of every process along a one-axis mesh.

Many processes (``config.distributed``) run one job: each feeds its own rows of every global batch, process 0 decides
which batches are still to do, writes the batch files and the report into the workdir they all share.
"""

import functools
import json
import os
import pickle
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

import eval.datasets
from perturb_jax import checkpoint, config as config_lib, distributed, perturb, report, results_store, scoring
from perturb_jax import sharding
from perturb_jax import workdir as workdir_lib

SPLITS = ("tune", "eval")
# Fields that do not change any stored number: a run may resume with other values of these.
_NOT_IN_FINGERPRINT = ("num_figures", "distributed")


def normalise(images: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
    mean = np.asarray(config.model.mean, np.float32)
    std = np.asarray(config.model.std, np.float32)
    return (images.astype(np.float32) / 255.0 - mean) / std


def batch_bounds(num_examples: int, batch_size: int) -> list[tuple[int, int]]:
    """(first position, number of examples) of each global batch: consecutive examples of the split, those that fail
    to load included (they hold a row, explained with a filler and recorded as skipped), so that every process
    knows which examples its rows hold without reading the others."""
    return [(start, min(batch_size, num_examples - start)) for start in range(0, num_examples, batch_size)]


def _metadata(ex: dict, with_image: bool) -> dict:
    keys = ("image_id", "label", "error") if "error" in ex else ("image_id", "label", "boxes", "boxes_original",
                                                                "original_size")
    return {k: ex[k] for k in keys} | ({"image": ex["image"]} if with_image and "error" not in ex else {})


def _image_shape(config, split: str, num_examples: int) -> tuple:
    """The shape of the split's images (all alike: the loaders resize), from its first example that loads."""
    for row in range(num_examples):
        ex = next(iter(eval.datasets.load(config.data, split, [row])[0]))
        if "error" not in ex:
            return ex["image"].shape
    return (config.data.image_size, config.data.image_size, 3)


def _explain_one_batch(explain_fn, state, own: dict, n: int, config, batch_sharding, num_images: int,
                       image_shape: tuple) -> dict:
    """Explains one global batch of ``n`` examples from ``own`` ({row: example} of this process's rows; a row past
    ``n`` or whose example failed to load gets a filler); every process gets every row back, with each row's record
    from the process that read it. The first ``num_images`` good images travel too (for the figure)."""
    mine = sharding.process_rows(batch_sharding, config.batch_size)
    good = [own[r] if r in own and "error" not in own[r] else None for r in mine]
    images = np.stack([ex["image"] if ex else np.zeros(image_shape, np.uint8) for ex in good])
    labels = np.array([max(ex["label"], 0) if ex else 0 for ex in good], np.int32)
    out = explain_fn(state, *(jax.make_array_from_process_local_data(batch_sharding, a)
                              for a in (normalise(images, config), labels)))
    out = multihost_utils.process_allgather(out, tiled=True)
    records = {r: _metadata(ex, r < num_images) for r, ex in own.items()}
    if jax.process_count() > 1:
        records = {r: m for part in distributed.allgather_bytes(pickle.dumps(records)) for r, m in
                   pickle.loads(part).items()}
    ok = [r for r in range(n) if "error" not in records[r]]
    bad = [records[r] for r in range(n) if "error" in records[r]]
    skipped = dict(skipped_id=np.array([m["image_id"] for m in bad], dtype=str),
                   skipped_reason=np.array([m["error"] for m in bad], dtype=str))
    if not ok:  # a batch of only unreadable images stores only them
        return skipped
    out = {k: np.asarray(v)[ok] for k, v in out.items()}
    out.update(
        skipped, image_id=np.array([records[r]["image_id"] for r in ok], dtype=str),
        label=np.array([records[r]["label"] for r in ok], np.int32),
        boxes=results_store.pad_boxes([records[r]["boxes"] for r in ok]),
        boxes_original=results_store.pad_boxes([records[r]["boxes_original"] for r in ok]),
        original_size=np.array([records[r]["original_size"] for r in ok], np.int32))
    figure = [records[r]["image"] for r in ok if "image" in records[r]]
    if figure:
        out["images"] = np.stack(figure)
    return out


def explain_split(config, workdir: str, split_name: str, split: str, num_examples: int, explain_fn, state,
                  batch_sharding, progress) -> None:
    """Explains every image of one split, batch by batch, skipping the batches already stored. Each process reads
    and decodes only the examples of its own rows, in one pass over the split (one ``load``: ImageNet's loader
    indexes the tar and the boxes each time); process 0 decides what is left and writes each batch file."""
    lead = jax.process_index() == 0
    mine = sharding.process_rows(batch_sharding, config.batch_size)
    bounds = batch_bounds(num_examples, config.batch_size)
    if not bounds:
        return
    stored = [os.path.exists(results_store.batch_path(workdir, split_name, i)) for i in range(len(bounds))]
    stored = multihost_utils.broadcast_one_to_all(np.array(stored if lead else [False] * len(bounds), np.int32))
    todo = [(i, first, n) for i, (first, n) in enumerate(bounds) if not stored[i]]
    progress.update(num_examples - sum(n for _, _, n in todo))
    if not todo:
        return
    rows = {i: sorted(r for r in mine if r < n) for i, _, n in todo}  # the loaders return rows in increasing order
    wanted = [first + r for i, first, _ in todo for r in rows[i]]
    examples = iter(eval.datasets.load(config.data, split, wanted)[0] if wanted else ())
    image_shape = _image_shape(config, split, num_examples)
    for index, first, n in todo:
        start = time.perf_counter()
        own = {r: next(examples) for r in rows[index]}
        num_images = config.num_figures if index == 0 and split_name == "eval" else 0
        out = _explain_one_batch(explain_fn, state, own, n, config, batch_sharding, num_images, image_shape)
        failed, skipped = int(out.get("failed", np.zeros(0)).sum()), len(out["skipped_id"])
        if lead and (failed or skipped):
            logging.warning("%s batch %d: %d images failed (non-finite loss), %d skipped", split_name, index,
                            failed, skipped)
        path = results_store.batch_path(workdir, split_name, index)
        distributed.on_lead(functools.partial(results_store.write_batch, path, out))
        if lead:
            logging.info("%s batch %d: %d images in %.1f s", split_name, index, n, time.perf_counter() - start)
        progress.update(n)


def explain_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the whole job (joining the other processes first, when there are); returns the summary that
    ``results.json`` holds, on every process."""
    distributed.initialize(config.distributed)
    config_lib.validate(config)
    lead = jax.process_index() == 0
    _prepare_workdir(config, workdir)
    splits = {name: split for name, split in zip(SPLITS, (config.data.tune_split, config.data.eval_split)) if split}
    counts = distributed.collectively(  # missing data fails here; process 0 generates the embedded data first
        lambda: {name: eval.datasets.load(config.data, split)[1] for name, split in splits.items()}, lead_first=True)
    model = distributed.collectively(
        lambda: checkpoint.load_model(config.model.checkpoint, how_to_make=_how_to_make(config)))
    graphdef, state = nnx.split(model)
    explain_fn = perturb.make_explain_fn(graphdef, perturb.Settings.from_config(config))
    batch_sharding, replicated = sharding.data_parallel()
    state = sharding.replicate(state, replicated)

    with tqdm(total=sum(counts.values()), desc="explaining", unit="img", dynamic_ncols=True,
              disable=not lead) as progress:
        for split_name, split in splits.items():
            explain_split(config, workdir, split_name, split, counts[split_name], explain_fn, state, batch_sharding,
                          progress)

    summary = distributed.on_lead(lambda: _score_and_report(config, workdir))
    if jax.process_count() > 1:
        shared = json.loads(distributed.allgather_bytes(json.dumps(summary).encode() if lead else b"")[0])
        summary = summary if lead else shared
    return summary


def _score_and_report(config, workdir: str) -> dict:
    tune, evaluation = (results_store.read_split(workdir, name) for name in SPLITS)
    summary, per_image = scoring.score(config, tune, evaluation)
    report.write_all(workdir, config, summary, per_image, evaluation)
    return summary


def _prepare_workdir(config, workdir: str) -> None:
    """Process 0 creates ``workdir`` and binds it to the config; every other process must see it there too."""
    lead = jax.process_index() == 0
    token = distributed.allgather_bytes(os.urandom(8).hex().encode())[0].decode() if jax.process_count() > 1 else ""

    def prepare():
        if lead:
            workdir_lib.prepare(workdir, "maps")
        if token:
            workdir_lib.check_shared(workdir, token, jax.process_index())
        workdir_lib.check_fingerprint(config, workdir, _NOT_IN_FINGERPRINT, write=lead)

    distributed.collectively(prepare, lead_first=True)
    if token and lead:
        workdir_lib.remove_shared(workdir)


def _how_to_make(config) -> str:
    if config.model.checkpoint == config_lib.EMBEDDED_CHECKPOINT:
        return config_lib.TRAIN_EMBEDDED + f" --config.export_dir={config_lib.EMBEDDED_CHECKPOINT}"
    return "python -m perturb_jax.convert_weights --torch_checkpoint=vgg19_bn-c79401a0.pth --out=" + \
        config.model.checkpoint

