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
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

import eval.datasets
from eval import boxes as box_ops
from perturb_jax import methods
from perturb_jax.explain import config as config_lib, report, results_store, scores
from perturb_jax.runtime import checkpoint, distributed, sharding
from perturb_jax.runtime import workdir as workdir_lib

SPLITS = ("tune", "eval")
# Fields that do not change any stored number: a run may resume with other values of these.
# Fields that do not change any stored number: a run may resume with other values of these. Each method's options
# are checked apart (``maps/<method>/options.json``), so a finished workdir takes a new method.
_NOT_IN_FINGERPRINT = ("num_figures", "distributed", "methods", "method", "chunk_size")


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


def _batch_key(config, split_name: str, index: int) -> jax.Array:
    """The sampling methods' key for one batch: the same on a resumed run, different for every batch."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), SPLITS.index(split_name)), index)


def _check_labels(labels: np.ndarray, own: dict, rows: list, config, num_classes: int) -> None:
    """With ``target = ground_truth`` every label must be a class of the model (checked before any compiling)."""
    if config.target != "ground_truth":
        return
    bad = [r for r, label in zip(rows, labels) if r in own and "error" not in own[r] and
           not 0 <= own[r]["label"] < num_classes]
    if bad:
        ex = own[bad[0]]
        raise config_lib.ConfigError(
            f"config.target: ground_truth label {ex['label']} of {ex['image_id']} is not one of the model's "
            f"{num_classes} classes; use --config.target=predicted or a checkpoint trained on these labels")


class Runner:
    """Runs the methods of ``config.methods`` on global batches: one compiled program per method (ahead of its
    first batch, its compile time kept apart), the batch's targets from one forward pass."""

    def __init__(self, config, graphdef, state, batch_sharding):
        self.config, self.state, self.sharding = config, state, batch_sharding
        self.settings = {m: config_lib.method_settings(config, m) for m in config.methods}
        self.fns = {m: methods.make_fn(m, graphdef, self.settings[m]) for m in config.methods}
        self.compiled = {}
        self.num_classes = int(nnx.merge(graphdef, state).fc[2].out_features)
        self.predict = jax.jit(lambda st, x: jnp.argmax(nnx.merge(graphdef, st)(x)[0], axis=-1).astype(jnp.int32))

    def run(self, images, labels, key, todo: list[str]) -> tuple[dict, dict]:
        """(records common to the methods: predicted, target; {method: outputs with batch_seconds}) of one batch."""
        predicted = self.predict(self.state, images)
        targets = predicted if self.config.target == "predicted" else jnp.maximum(labels, 0)
        common = {"predicted": predicted, "target": targets}
        outputs = {}
        for m in todo:
            args = (self.state, images, targets, key)
            compile_s = 0.0
            if m not in self.compiled:
                start = time.perf_counter()
                self.compiled[m] = self.fns[m].lower(*args).compile()
                compile_s = time.perf_counter() - start
            start = time.perf_counter()
            out = jax.block_until_ready(self.compiled[m](*args))
            out["batch_seconds"] = time.perf_counter() - start
            out["batch_compile_seconds"] = compile_s
            outputs[m] = out
        return common, outputs


def _gather(out: dict) -> dict:
    return {k: np.asarray(v) for k, v in multihost_utils.process_allgather(out, tiled=True).items()}


def _explain_one_batch(runner: Runner, own: dict, n: int, todo: list[str], key, num_images: int,
                       image_shape: tuple) -> tuple[dict, dict]:
    """Explains one global batch of ``n`` examples from ``own`` ({row: example} of this process's rows; a row past
    ``n`` or whose example failed to load gets a filler) with the methods ``todo``; every process gets every row
    back, with each row's record from the process that read it. Returns (the batch's records, {method: its
    outputs for the rows that loaded}); a method's non-finite map marks that image failed for that method. The
    first ``num_images`` good images travel too (for the figure)."""
    config = runner.config
    mine = sharding.process_rows(runner.sharding, config.batch_size)
    good = [own[r] if r in own and "error" not in own[r] else None for r in mine]
    images = np.stack([ex["image"] if ex else np.zeros(image_shape, np.uint8) for ex in good])
    labels = np.array([max(ex["label"], 0) if ex else 0 for ex in good], np.int32)
    _check_labels(labels, own, mine, config, runner.num_classes)
    common, outputs = runner.run(*(jax.make_array_from_process_local_data(runner.sharding, a)
                                   for a in (normalise(images, config), labels)), key, todo)
    common = _gather(common)
    records = {r: _metadata(ex, r < num_images) for r, ex in own.items()}
    if jax.process_count() > 1:
        records = {r: m for part in distributed.allgather_bytes(pickle.dumps(records)) for r, m in
                   pickle.loads(part).items()}
    ok = [r for r in range(n) if "error" not in records[r]]
    bad = [records[r] for r in range(n) if "error" in records[r]]
    record = dict(skipped_id=np.array([m["image_id"] for m in bad], dtype=str),
                  skipped_reason=np.array([m["error"] for m in bad], dtype=str))
    per_method = {}
    for m, out in outputs.items():
        timing = {k: np.array([out.pop(k)], np.float64) for k in ("batch_seconds", "batch_compile_seconds")}
        out = {k: v[ok] for k, v in _gather(out).items()}
        finite = np.isfinite(out["saliency"]).all(axis=(1, 2))
        out["failed"] = out.get("failed", np.zeros(len(ok), bool)) | ~finite
        out["saliency"] = np.where(finite[:, None, None], out["saliency"], 0).astype(np.float32)
        per_method[m] = out | timing | {"batch_images": np.array([len(ok)], np.int64)}
    if not ok:  # a batch of only unreadable images stores only them
        return record, {m: {} for m in outputs}
    record.update(
        {k: v[ok] for k, v in common.items()}, image_id=np.array([records[r]["image_id"] for r in ok], dtype=str),
        label=np.array([records[r]["label"] for r in ok], np.int32),
        boxes=box_ops.pad_boxes([records[r]["boxes"] for r in ok]),
        boxes_original=box_ops.pad_boxes([records[r]["boxes_original"] for r in ok]),
        original_size=np.array([records[r]["original_size"] for r in ok], np.int32))
    figure = [records[r]["image"] for r in ok if "image" in records[r]]
    if figure:
        record["images"] = np.stack(figure)
    return record, per_method


def explain_split(config, workdir: str, split_name: str, split: str, num_examples: int, runner: Runner,
                  progress) -> None:
    """Explains every image of one split, batch by batch, with every method whose file of that batch is missing.
    Each process reads and decodes only the examples of its own rows, in one pass over the split (one ``load``:
    ImageNet's loader indexes the tar and the boxes each time); process 0 decides what is left and writes."""
    lead = jax.process_index() == 0
    mine = sharding.process_rows(runner.sharding, config.batch_size)
    bounds = batch_bounds(num_examples, config.batch_size)
    if not bounds:
        return
    kinds = ("",) + tuple(config.methods)  # "" is the batch's records
    stored = [[os.path.exists(results_store.batch_path(workdir, split_name, i, m)) for m in kinds]
              for i in range(len(bounds))]
    stored = multihost_utils.broadcast_one_to_all(
        np.array(stored if lead else [[False] * len(kinds)] * len(bounds), np.int32))
    todo = [(i, first, n) for i, (first, n) in enumerate(bounds) if not stored[i].all()]
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
        missing = [m for m, done in zip(config.methods, stored[index][1:]) if not done]
        record, per_method = _explain_one_batch(runner, own, n, missing, _batch_key(config, split_name, index),
                                                num_images, image_shape)
        failed = {m: int(out["failed"].sum()) for m, out in per_method.items() if "failed" in out}
        if lead and (any(failed.values()) or len(record["skipped_id"])):
            logging.warning("%s batch %d: failed (non-finite) %s, %d skipped", split_name, index,
                            {m: k for m, k in failed.items() if k}, len(record["skipped_id"]))
        for m, out in per_method.items():
            distributed.on_lead(functools.partial(results_store.write_batch,
                                                  results_store.batch_path(workdir, split_name, index, m), out))
        if not stored[index][0]:  # the records last: a batch counts as begun only when its maps are there
            distributed.on_lead(functools.partial(results_store.write_batch,
                                                  results_store.batch_path(workdir, split_name, index), record))
        if lead:
            logging.info("%s batch %d: %d images in %.1f s (%s)", split_name, index, n, time.perf_counter() - start,
                         ", ".join(f"{m} {out['batch_seconds'][0]:.1f} s" for m, out in per_method.items()
                                   if out))  # a batch of only unreadable images has no maps
        progress.update(n)


def explain_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the whole job (joining the other processes first, when there are); returns the summary that
    ``results.json`` holds, on every process."""
    distributed.initialize(config.distributed)
    config_lib.validate(config)
    lead = jax.process_index() == 0
    splits = {name: split for name, split in zip(SPLITS, (config.data.tune_split, config.data.eval_split)) if split}
    distributed.collectively(lambda: _check_splits(config, splits), lead_first=True)  # before the workdir is bound
    _prepare_workdir(config, workdir)
    counts = distributed.collectively(  # missing data fails here
        lambda: {name: eval.datasets.load(config.data, split)[1] for name, split in splits.items()}, lead_first=True)
    model = distributed.collectively(
        lambda: checkpoint.load_model(config.model.checkpoint, how_to_make=_how_to_make(config)))
    graphdef, state = nnx.split(model)
    batch_sharding, replicated = sharding.data_parallel()
    runner = Runner(config, graphdef, sharding.replicate(state, replicated), batch_sharding)

    with tqdm(total=sum(counts.values()), desc="explaining", unit="img", dynamic_ncols=True,
              disable=not lead) as progress:
        for split_name, split in splits.items():
            explain_split(config, workdir, split_name, split, counts[split_name], runner, progress)

    summary = distributed.on_lead(lambda: _score_and_report(config, workdir))
    if jax.process_count() > 1:
        shared = json.loads(distributed.allgather_bytes(json.dumps(summary).encode() if lead else b"")[0])
        summary = summary if lead else shared
    return summary


def _check_splits(config, splits: dict) -> None:
    """Each split must select examples of the data (process 0 generates the embedded data first)."""
    for name, split in splits.items():
        eval.datasets.check_split(config.data, split, f"data.{name}_split")


def _score_and_report(config, workdir: str) -> dict:
    tune, evaluation = (results_store.read_split(workdir, name, config.methods) for name in SPLITS)
    summary, per_image = scores.score(config, tune, evaluation)
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
        for m in config.methods:
            options = config_lib.method_settings(config, m)
            workdir_lib.check_options(os.path.join(workdir, "maps", m), f"method.{m}",
                                      {k: v for k, v in options.items() if k != "chunk_size"}, write=lead)

    distributed.collectively(prepare, lead_first=True)
    if token and lead:
        workdir_lib.remove_shared(workdir)


def _how_to_make(config) -> str:
    if config.model.checkpoint == checkpoint.EMBEDDED:
        return checkpoint.TRAIN_EMBEDDED + f" --config.export_dir={checkpoint.EMBEDDED}"
    return "python -m perturb_jax.runtime.convert_weights --torch_checkpoint=vgg19_bn-c79401a0.pth --out=" + \
        config.model.checkpoint

