"""Trains the Adversarial Localization Network and evaluates its boxes.

  python -m aln_jax.main --config=configs/aln.py --workdir=/tmp/aln

initialises JAX's distributed runtime when the config or the environment asks for it, then hands the config and the
workdir to ``train.train_and_evaluate``; running it again on the same workdir resumes from the latest checkpoint.
Any field can be overridden, e.g. ``--config.train.target_accuracy=0.3``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from aln_jax import train  # noqa: E402
from perturb_jax.runtime import cli, distributed  # noqa: E402


def train_job(config, workdir: str) -> dict:
    distributed.initialize(config.distributed)
    return train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    cli.run_job(train_job, "Config file, e.g. configs/aln.py.",
                "Directory for checkpoints, metrics and the evaluation (resumable).", (train.NonFiniteLossError,))
