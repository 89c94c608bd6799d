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


def _batches(examples, batch_size: int):
    """Groups good examples into batches; records that failed to load travel with the batch they fell in."""
    batch, skipped = [], []
    for ex in examples:
        if "error" in ex:
            skipped.append(ex)
            continue
        batch.append(ex)
        if len(batch) == batch_size:
            yield batch, skipped
            batch, skipped = [], []
    if batch or skipped:
        yield batch, skipped


def _explain_one_batch(explain_fn, state, batch, config, batch_sharding) -> dict:
    """Explains one global batch: this process feeds its rows (past the batch's end: its last image), every
    process gets every row back."""
    n = len(batch)
    local = [batch[min(row, n - 1)] for row in sharding.process_rows(batch_sharding, config.batch_size)]
    images = normalise(np.stack([ex["image"] for ex in local]), config)
    labels = np.maximum(np.array([ex["label"] for ex in local], np.int32), 0)
    out = explain_fn(state, *(jax.make_array_from_process_local_data(batch_sharding, a) for a in (images, labels)))
    out = {k: v[:n] for k, v in multihost_utils.process_allgather(out, tiled=True).items()}
    out.update(
        image_id=np.array([ex["image_id"] for ex in batch]), label=np.array([ex["label"] for ex in batch], np.int32),
        boxes=results_store.pad_boxes([ex["boxes"] for ex in batch]),
        boxes_original=results_store.pad_boxes([ex["boxes_original"] for ex in batch]),
        original_size=np.array([ex["original_size"] for ex in batch], np.int32))
    return out


def explain_split(config, workdir: str, split_name: str, split: str, explain_fn, state, batch_sharding,
                  progress) -> None:
    """Explains every image of one split, batch by batch, skipping the batches already stored (process 0 writes)."""
    lead = jax.process_index() == 0
    examples, _ = eval.datasets.load(config.data, split)
    for index, (batch, skipped) in enumerate(_batches(examples, config.batch_size)):
        path = results_store.batch_path(workdir, split_name, index)
        if not multihost_utils.broadcast_one_to_all(np.int32(lead and os.path.exists(path))):  # process 0 decides
            start = time.perf_counter()
            out = _explain_one_batch(explain_fn, state, batch, config, batch_sharding) if batch else {}
            out["skipped_id"] = np.array([ex["image_id"] for ex in skipped], dtype=str)
            out["skipped_reason"] = np.array([ex["error"] for ex in skipped], dtype=str)
            if index == 0 and split_name == "eval" and batch[: config.num_figures]:
                out["images"] = np.stack([ex["image"] for ex in batch[: config.num_figures]])
            failed = int(out.get("failed", np.zeros(0)).sum())
            if lead and (failed or skipped):
                logging.warning("%s batch %d: %d images failed (non-finite loss), %d skipped", split_name, index,
                                failed, len(skipped))
            distributed.on_lead(functools.partial(results_store.write_batch, path, out))
            if lead:
                logging.info("%s batch %d: %d images in %.1f s", split_name, index, len(batch),
                             time.perf_counter() - start)
        progress.update(len(batch) + len(skipped))


def explain_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the whole job (joining the other processes first, when there are); returns the summary that
    ``results.json`` holds, on every process."""
    distributed.initialize(config.distributed)
    config_lib.validate(config)
    lead = jax.process_index() == 0
    _prepare_workdir(config, workdir)
    splits = {name: split for name, split in zip(SPLITS, (config.data.tune_split, config.data.eval_split)) if split}
    total = distributed.collectively(  # missing data fails here; process 0 generates the embedded data first
        lambda: sum(eval.datasets.load(config.data, split)[1] for split in splits.values()), lead_first=True)
    model = distributed.collectively(
        lambda: checkpoint.load_model(config.model.checkpoint, how_to_make=_how_to_make(config)))
    graphdef, state = nnx.split(model)
    explain_fn = perturb.make_explain_fn(graphdef, perturb.Settings.from_config(config))
    batch_sharding, replicated = sharding.data_parallel()
    state = sharding.replicate(state, replicated)

    with tqdm(total=total, desc="explaining", unit="img", dynamic_ncols=True, disable=not lead) as progress:
        for split_name, split in splits.items():
            explain_split(config, workdir, split_name, split, explain_fn, state, batch_sharding, progress)

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

