"""One full training run of the classifier on the tiny embedded split: metrics, TensorBoard events, export,
resumption."""

import json
import os
import runpy

import jax
import numpy as np
import optax
import pytest
from tensorboard.backend.event_processing import event_accumulator

from perturb_jax.runtime import checkpoint, metrics_writer
from perturb_jax import train_classifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_export_and_resume(tmp_path):
    config = runpy.run_path(f"{ROOT}/configs/classifier.py")["get_config"]("tiny")
    config.data.data_dir = str(tmp_path / "tfds")
    work = tmp_path / "work"
    result = train_classifier.train_and_evaluate(config, str(work))
    assert 0.0 <= result["validation_accuracy"] <= 1.0
    with open(work / "metrics.jsonl") as f:
        epochs = [json.loads(line) for line in f]
    assert [e["epoch"] for e in epochs] == [1] and np.isfinite(epochs[0]["loss"])
    model = checkpoint.load_model(result["export_dir"])
    assert model.fc[2].kernel.shape == (512, 10)
    # A longer run on the same workdir starts from the saved epoch instead of the beginning; its first record is
    # rewritten as a workdir of the time before records carried their step and learning rate, and is kept.
    steps_per_epoch = epochs[0]["step"]
    with open(work / "metrics.jsonl", "w") as f:
        f.write(json.dumps({k: v for k, v in epochs[0].items() if k not in ("step", "learning_rate")}) + "\n")
    config.num_epochs = 2
    train_classifier.train_and_evaluate(config, str(work))
    with open(work / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [(r["step"], r["epoch"]) for r in records] == [(steps_per_epoch, 1), (2 * steps_per_epoch, 2)]
    assert records[0]["loss"] == epochs[0]["loss"] and "learning_rate" in records[1]
    assert (work / "learning_curves.png").stat().st_size > 0


def test_dihedral_augment_gives_the_eight_symmetries_of_the_square():
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    views = np.asarray(train_classifier.dihedral_augment(np.repeat(image[None], 64, 0), jax.random.key(0)))
    # By hand: the 8 symmetries are the 4 rotations of the image and of its transpose.
    group = {tuple(np.rot90(v, k).ravel()) for v in (image, image.transpose(1, 0, 2)) for k in range(4)}
    assert len(group) == 8
    assert {tuple(v.ravel()) for v in views} == group
    # The first row of a view is a row or column of the image, read either way.
    assert all(sorted(v[0, :, 0]) in ([0, 1, 2, 3], [0, 4, 8, 12], [12, 13, 14, 15], [3, 7, 11, 15]) for v in views)


def _events(directory) -> dict:
    """{tag: [(step, value)]} of every scalar in the event files under ``directory`` (tf.summary.scalar writes
    tensors, read back at float32)."""
    acc = event_accumulator.EventAccumulator(str(directory), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {tag: [(e.step, float(np.frombuffer(e.tensor_proto.tensor_content, np.float32)[0])
                   if e.tensor_proto.tensor_content else float(e.tensor_proto.float_val[0]))
                  for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}


def test_tensorboard_events_hold_the_jsonl_records_at_the_global_step(tmp_path):
    config = runpy.run_path(f"{ROOT}/configs/classifier.py")["get_config"]("tiny")
    config.data.data_dir = str(tmp_path / "tfds")
    config.num_epochs = 2
    work = tmp_path / "work"
    train_classifier.train_and_evaluate(config, str(work))
    with open(work / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    steps_per_epoch = records[0]["step"]
    assert steps_per_epoch >= 2
    assert [(r["step"], r["epoch"]) for r in records] == [(steps_per_epoch, 1), (2 * steps_per_epoch, 2)]
    # The learning rate is that of each epoch's last update under the warmup-cosine schedule.
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                                  2 * steps_per_epoch)
    assert [r["learning_rate"] for r in records] == pytest.approx(
        [float(schedule(steps_per_epoch - 1)), float(schedule(2 * steps_per_epoch - 1))], rel=1e-6)
    assert 0 < records[1]["learning_rate"] < records[0]["learning_rate"] < config.learning_rate

    events = _events(work / "tensorboard")
    assert sorted(events) == ["accuracy", "epoch", "learning_rate", "loss", "seconds"]
    for tag, points in events.items():
        assert [s for s, _ in points] == [r["step"] for r in records], tag
        assert [v for _, v in points] == pytest.approx([r[tag] for r in records], rel=1e-6, abs=1e-7), tag
    assert all(0.0 <= v <= 1.0 for _, v in events["accuracy"]) and np.isfinite([v for _, v in events["loss"]]).all()
    assert (work / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_only_the_active_process_writes_metrics(tmp_path):
    """Processes other than 0 pass active=False: no jsonl, no event files."""
    writer = metrics_writer.MetricsWriter(str(tmp_path), 0, active=False, curves=train_classifier.CURVES)
    writer.write(1, dict(loss=1.0, accuracy=0.5, learning_rate=1e-3))
    writer.close()
    assert os.listdir(tmp_path) == []
