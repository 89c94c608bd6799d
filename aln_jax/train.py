"""Trains the Adversarial Localization Network and evaluates it: ``train_and_evaluate(config, workdir)``.

Each process reads its own shard of the training data (images, labels and superpixels, cached by ``aln_jax.data``);
the global batch is assembled with ``jax.make_array_from_process_local_data`` and trained by the shard_map step of
``aln_jax.step`` over every device of every process. Batches and noise are functions of (seed, step), and the state
(both networks, both optimisers, lambda_reg, step) is checkpointed with an async Orbax ``CheckpointManager``, so a
resumed run repeats the uninterrupted one. Metrics go to TensorBoard, stdout and ``metrics.jsonl`` from process 0.
"""

import os
import time

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from aln_jax import config as config_lib, data, evaluate, models, predict, step as step_lib
from perturb_jax.runtime import metrics_writer
import eval.datasets
from perturb_jax.runtime import checkpoint, distributed, sharding, workdir as workdir_lib
from perturb_jax.runtime import vgg
from eval.errors import ConfigError

NUM_CLASSES = {"clutter_shapes": 10, "imagenet2012": 1000}
# Fields that change no trained number: a run may resume with other values of these.
_NOT_IN_FINGERPRINT = ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval", "protocol",
                       "distributed", "data.tune_split", "data.eval_split", "data.cache_dir", "slic.workers")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the step and the last good checkpoint."""


def build_models(config: ml_collections.ConfigDict, num_classes: int):
    """Both networks, initialised from ``config.seed`` (the same on every process)."""
    a = config.aln
    encoder = None if a.encoder == "scratch" else vgg.folded(checkpoint.load_model(a.encoder))
    corruption = models.CorruptionNet(a.image_size, a.corruption_widths, a.bottleneck,
                                      num_classes=num_classes if a.class_conditional else 0, vgg=encoder,
                                      freeze_encoder=a.freeze_encoder, rngs=nnx.Rngs(config.seed))
    if a.classifier == "small":
        classifier = models.Classifier(num_classes, a.classifier_widths, a.image_size, rngs=nnx.Rngs(config.seed + 1))
    else:
        classifier = vgg.folded(checkpoint.load_model(a.classifier))
        if classifier.fc[-1].out_features != num_classes:
            raise ConfigError(f"config.aln.classifier: {a.classifier} has {classifier.fc[-1].out_features} classes, "
                              f"{config.data.name} has {num_classes}; give a checkpoint trained on it or 'small'")
    return corruption, classifier


def optimisers(config: ml_collections.ConfigDict):
    return optax.adam(config.train.corruption_learning_rate), optax.adam(config.train.classifier_learning_rate)


def check_splits(config) -> None:
    """Every split of the run must select examples of the data (the embedded data is generated here if missing)."""
    for field in ("train_split", "tune_split", "eval_split"):
        if config.data[field]:
            eval.datasets.check_split(config.data, config.data[field], f"data.{field}")


def check_workdir(config, workdir: str) -> None:
    """Creates ``workdir``; a workdir trained with another config (other than run-length fields) is refused."""
    workdir_lib.prepare(workdir)
    workdir_lib.check_fingerprint(config, workdir, _NOT_IN_FINGERPRINT, write=jax.process_index() == 0)


def checkpoint_manager(config, workdir: str) -> ocp.CheckpointManager:
    """Asynchronous saves of the state every ``config.checkpoint_every`` steps, the last ``keep_checkpoints`` kept."""
    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, enable_async_checkpointing=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                 item_handlers=ocp.StandardCheckpointHandler(), options=options)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, workdir: str):
    """(state, step) of the newest readable checkpoint, or (None, 0); a corrupt one is reported and skipped.

    Shapes are compared with the config's before reading, so a checkpoint of another architecture is a one-line
    ``ConfigError`` rather than a restore error.
    """
    expected = step_lib.tree_shapes(abstract_state)
    for saved_step in sorted(manager.all_steps(), reverse=True):
        try:
            metadata = manager.item_metadata(saved_step)
            stored = step_lib.tree_shapes(getattr(metadata, "tree", metadata))
        except Exception as e:  # noqa: BLE001 - unreadable metadata is a corrupt checkpoint.
            logging.warning("checkpoint %d in %s is unreadable (%s); trying the previous one", saved_step, workdir, e)
            continue
        if stored != expected:
            bad = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))[:3]
            raise ConfigError(f"--workdir {workdir}: checkpoint {saved_step} does not fit the config (shapes differ at "
                              f"{', '.join(bad)}); use a new --workdir or the config it was trained with")
        try:
            state = manager.restore(saved_step, args=ocp.args.StandardRestore(abstract_state))
        except Exception as e:  # noqa: BLE001 - any failure to read: fall back to the previous checkpoint.
            logging.warning("checkpoint %d in %s is corrupt (%s: %s); resuming from the previous one", saved_step,
                            workdir, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            continue
        return state, saved_step
    return None, 0


def _host(tree) -> dict:
    """Replicated global arrays -> numpy on this process (works across processes)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _initial(config, mesh):
    """(both networks, both optimisers, the initial state, its abstract twin replicated over ``mesh``)."""
    corruption, classifier = build_models(config, NUM_CLASSES[config.data.name])
    tx_c, tx_k = optimisers(config)
    state = step_lib.init_state(corruption, classifier, tx_c, tx_k, config.train.lambda_reg)
    replicated = NamedSharding(mesh, P())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=replicated),
                            state)
    return (corruption, classifier), (tx_c, tx_k), state, abstract


def latest_state(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, int]:
    """(state on the host, step) of ``workdir``'s latest readable checkpoint; ``FileNotFoundError`` without one."""
    _, _, _, abstract = _initial(config, step_lib.make_mesh())
    with checkpoint_manager(config, workdir) as manager:
        state, step = restore_latest(manager, abstract, workdir)
    if state is None:
        raise FileNotFoundError(f"--workdir {workdir} holds no checkpoint; train it with python -m aln_jax.main")
    return _host(state), step


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to ``config.num_steps`` (resuming from the latest checkpoint); returns the final state on the host."""
    mesh = step_lib.make_mesh()
    (corruption, classifier), (tx_c, tx_k), state, abstract = _initial(config, mesh)
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P(step_lib.AXIS))
    manager = checkpoint_manager(config, workdir)
    restored, start = restore_latest(manager, abstract, workdir)
    state = restored if restored is not None else sharding.replicate(state, replicated)
    if start:
        logging.warning("resumed from step %d of %s", start, workdir)
    if start >= config.num_steps:
        manager.close()
        return _host(state)

    train_data = data.load_train_data(config.data, config.data.train_split, config.aln.image_size, config.slic,
                                       config.data.cache_dir or data.DEFAULT_CACHE, jax.process_index(),
                                       jax.process_count(), progress=jax.process_index() == 0)
    train_step = step_lib.make_train_step(nnx.graphdef(corruption), nnx.graphdef(classifier), tx_c, tx_k,
                                          step_lib.Settings.from_config(config), mesh)
    local = config.batch_size // jax.process_count()
    position = (jax.process_index() * local + np.arange(local)).astype(np.int32)
    key = jax.random.key(config.seed)
    writer = metrics_writer.MetricsWriter(workdir, start, active=jax.process_index() == 0)
    progress = tqdm(total=config.num_steps, initial=start, desc="training", unit="step", dynamic_ncols=True,
                    disable=jax.process_index() != 0)
    last_good, window, t0 = start, [], time.time()
    for i in range(start, config.num_steps):
        rows = data.batch_indices(config.seed, i, len(train_data.labels), local, jax.process_index())
        batch = dict(data.local_batch(train_data, rows), position=position)
        batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()}
        state, metrics = train_step(state, batch, key, i)
        metrics = _host(metrics)
        if not all(np.isfinite(v) for v in metrics.values()):
            manager.wait_until_finished()
            manager.close()
            raise NonFiniteLossError(f"non-finite loss at step {i + 1}; the last good checkpoint is step {last_good} "
                                     f"in {workdir}; lower config.train.*_learning_rate")
        window.append(metrics)
        progress.update(1)
        done = i + 1
        if done % config.log_every == 0 or done == config.num_steps:
            elapsed = time.time() - t0
            record = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
            record["images_per_second"] = len(window) * config.batch_size / max(elapsed, 1e-9)
            writer.write(done, record)
            progress.set_postfix(acc=f"{record['accuracy_corrupted']:.2f}", area=f"{record['occluded_area']:.2f}",
                                 lam=f"{record['lambda_reg']:.3g}")
            window, t0 = [], time.time()
        if done % config.checkpoint_every == 0 or done == config.num_steps:
            manager.save(done, args=ocp.args.StandardSave(state))
            last_good = done
    manager.wait_until_finished()
    manager.close()
    progress.close()
    writer.close()
    return _host(state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Validates, trains (or resumes), then evaluates the trained networks; returns the evaluation summary."""
    config_lib.validate(config, jax.device_count(), jax.process_count())
    distributed.collectively(lambda: check_splits(config), lead_first=True)  # before 30 minutes of training
    check_workdir(config, workdir)
    state = train(config, workdir)
    corruption, classifier = build_models(config, NUM_CLASSES[config.data.name])
    predict_fn = predict.make_predict_fn(config, nnx.graphdef(corruption), nnx.graphdef(classifier), state)
    return evaluate.evaluate(config, workdir, predict_fn, predict.make_strong_fn(config))
