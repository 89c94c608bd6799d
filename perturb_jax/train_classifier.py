"""Trains the classifier under explanation on the embedded benchmark (``configs/classifier.py``).

``update_fn`` is a jitted pure function over plain pytrees (parameters, batch statistics, optimiser state), data
parallel over every device by sharding the batch over a one-axis ``Mesh``. The run checkpoints each epoch with
Orbax and resumes from the last one; a non-finite loss stops it with the step where it happened. Each epoch's means
(loss, accuracy) and its last learning rate go, at the global step, to ``metrics.jsonl``, TensorBoard event files
(``WORKDIR/tensorboard``), stdout and ``learning_curves.png``, from process 0 (``runtime.metrics_writer``).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from eval.datasets import embedded
from perturb_jax.runtime import checkpoint, distributed, metrics_writer, sharding
from perturb_jax.runtime.vgg import VGG19BN

AUGMENTATIONS = ("dihedral", "none")
CURVES = (("loss",), ("accuracy",), ("learning_rate",))  # the panels of learning_curves.png


def dihedral_augment(images: jax.Array, key: jax.Array) -> jax.Array:
    """Each square NHWC image transposed and flipped at random: one of the 8 symmetries of the square.

    The embedded objects come at every rotation already, so these views stay in the data's distribution.
    """
    transpose, flip_h, flip_w = jax.random.bernoulli(key, 0.5, (3, images.shape[0], 1, 1, 1))
    images = jnp.where(transpose, jnp.swapaxes(images, 1, 2), images)
    images = jnp.where(flip_h, images[:, ::-1], images)
    return jnp.where(flip_w, images[:, :, ::-1], images)


def make_update_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, augment: bool):
    """``update_fn(params, batch_stats, opt_state, images, labels, key) -> (params, batch_stats, opt_state,
    metrics)``, jitted; ``params`` and ``batch_stats`` are plain nested dicts, ``key`` seeds this step's dropout
    and, with ``augment``, its ``dihedral_augment``.
    """

    def update_fn(params, batch_stats, opt_state, images, labels, key):
        if augment:
            key, augment_key = jax.random.split(key)
            images = dihedral_augment(images, augment_key)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, batch_stats)
            logits, _ = model(images, train=True, rngs=nnx.Rngs(dropout=key))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(loss=loss, accuracy=(logits.argmax(-1) == labels).mean(), grad_norm=optax.global_norm(grads))
        return params, batch_stats, opt_state, metrics

    return jax.jit(update_fn, donate_argnums=(0, 1, 2))


def normalise(images: np.ndarray, mean, std) -> np.ndarray:
    return (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def accuracy(model: VGG19BN, data_config, split: str, mean, std, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (inference mode) on a whole split."""
    graphdef, state = nnx.split(model)
    predict = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)[0].argmax(-1))
    correct = total = 0
    for images, labels in embedded.tf_dataset(data_config, split, batch_size).as_numpy_iterator():
        correct += int((np.asarray(predict(state, normalise(images, mean, std))) == labels).sum())
        total += len(labels)
    return correct / total


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, checkpoints every epoch (resuming from the last), exports the model, returns final metrics."""
    os.makedirs(workdir, exist_ok=True)
    if config.augment not in AUGMENTATIONS:
        raise ValueError(f"config.augment: {config.augment!r} is not one of {AUGMENTATIONS}")
    if config.batch_size % jax.device_count():
        raise ValueError(f"config.batch_size: {config.batch_size} does not divide over {jax.device_count()} devices")
    model = VGG19BN(config.num_classes, config.width_divisor, rngs=nnx.Rngs(config.seed))
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)
    _, num_train = embedded.load(config.data, "train")
    steps_per_epoch = num_train // config.batch_size
    total_steps = steps_per_epoch * config.num_epochs
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, total_steps)
    tx = optax.adamw(schedule, weight_decay=config.weight_decay)
    opt_state = tx.init(params)
    update_fn = make_update_fn(graphdef, tx, config.augment == "dihedral")

    manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                    options=ocp.CheckpointManagerOptions(max_to_keep=2))
    train_state = dict(params=params, batch_stats=batch_stats, opt_state=opt_state)
    start_epoch = 0
    if manager.latest_step() is not None:
        start_epoch = manager.latest_step()
        train_state = manager.restore(start_epoch, args=ocp.args.StandardRestore(train_state))
        logging.info("resumed from epoch %d", start_epoch)
    # Dropout keys are drawn from (seed, step): a resumed run repeats them.
    dropout_key = jax.random.key(config.seed)
    batch_sharding, _ = sharding.data_parallel()
    # Records at the global step (updates done); a resumed run drops those past its checkpoint.
    if jax.process_index() == 0:
        _add_steps(os.path.join(workdir, "metrics.jsonl"), steps_per_epoch)
    writer = metrics_writer.MetricsWriter(workdir, start_epoch * steps_per_epoch, active=jax.process_index() == 0,
                                          curves=CURVES)
    for epoch in range(start_epoch, config.num_epochs):
        t0, sums = time.time(), dict(loss=0.0, accuracy=0.0)
        ds = embedded.tf_dataset(config.data, "train", config.batch_size, shuffle_seed=config.seed + epoch)
        for step, (images, labels) in enumerate(ds.take(steps_per_epoch).as_numpy_iterator()):
            images = jax.device_put(normalise(images, config.mean, config.std), batch_sharding)
            labels = jax.device_put(labels.astype(np.int32), batch_sharding)
            params, batch_stats, opt_state, metrics = update_fn(
                train_state["params"], train_state["batch_stats"], train_state["opt_state"], images, labels,
                jax.random.fold_in(dropout_key, epoch * steps_per_epoch + step))
            train_state = dict(params=params, batch_stats=batch_stats, opt_state=opt_state)
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step}; lower config.learning_rate")
            sums["loss"] += loss
            sums["accuracy"] += float(metrics["accuracy"])
        done = (epoch + 1) * steps_per_epoch
        record = dict(epoch=epoch + 1, seconds=round(time.time() - t0, 1),
                      **{k: v / steps_per_epoch for k, v in sums.items()},
                      learning_rate=float(schedule(done - 1)))  # that of the epoch's last update
        writer.write(done, record)
        manager.save(epoch + 1, args=ocp.args.StandardSave(train_state))
    manager.wait_until_finished()
    writer.close()

    model = nnx.merge(graphdef, train_state["params"], train_state["batch_stats"])
    val_accuracy = accuracy(model, config.data, "validation", config.mean, config.std)
    export_dir = config.export_dir or os.path.join(workdir, "model")
    provenance = (f"python -m perturb_jax.train_classifier --config=configs/classifier.py; seed {config.seed}, "
                  f"{config.num_epochs} epochs, augment {config.augment}; validation accuracy {val_accuracy:.4f}")
    checkpoint.save_model(model, export_dir, num_classes=config.num_classes, width_divisor=config.width_divisor,
                          provenance=provenance)
    result = dict(validation_accuracy=val_accuracy, export_dir=export_dir)
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    logging.info("%s", result)
    return result


_CONFIG = config_flags.DEFINE_config_file("config", None, "Classifier config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")


def _add_steps(path: str, steps_per_epoch: int) -> None:
    """Gives the records of a workdir written before records carried their global step (one per epoch, ``epoch``
    epochs done) that step, so that a resumed run keeps them."""
    records = metrics_writer.read_records(path)
    if any("step" not in r for r in records):
        with open(path, "w") as f:
            f.writelines(json.dumps({"step": r.get("step", r["epoch"] * steps_per_epoch), **r}) + "\n"
                         for r in records)


def main(argv):
    del argv
    distributed.log_backend()
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
