"""One full training run of the classifier on the tiny embedded split: metrics, export, resumption."""

import json
import os
import runpy

import jax
import numpy as np

from perturb_jax.runtime import checkpoint
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
    # A longer run on the same workdir starts from the saved epoch instead of the beginning.
    config.num_epochs = 2
    train_classifier.train_and_evaluate(config, str(work))
    with open(work / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]


def test_dihedral_augment_gives_the_eight_symmetries_of_the_square():
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    views = np.asarray(train_classifier.dihedral_augment(np.repeat(image[None], 64, 0), jax.random.key(0)))
    # By hand: the 8 symmetries are the 4 rotations of the image and of its transpose.
    group = {tuple(np.rot90(v, k).ravel()) for v in (image, image.transpose(1, 0, 2)) for k in range(4)}
    assert len(group) == 8
    assert {tuple(v.ravel()) for v in views} == group
    # The first row of a view is a row or column of the image, read either way.
    assert all(sorted(v[0, :, 0]) in ([0, 1, 2, 3], [0, 4, 8, 12], [12, 13, 14, 15], [3, 7, 11, 15]) for v in views)
