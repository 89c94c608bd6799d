"""Trains the Adversarial Localization Network and evaluates its boxes.

  python -m aln_jax.main --config=configs/aln.py --workdir=/tmp/aln

hands the config and the workdir to ``train.train_and_evaluate``; running it again on the same workdir resumes from
the latest checkpoint. Any field can be overridden, e.g. ``--config.train.target_accuracy=0.3``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from aln_jax import train  # noqa: E402
from perturb_jax import distributed  # noqa: E402
from perturb_jax.checkpoint import CheckpointError  # noqa: E402
from perturb_jax.config import ConfigError  # noqa: E402
from perturb_jax.cli import parse_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/aln.py.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the evaluation (resumable).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint at INFO; --verbosity=0 shows it.
    try:
        distributed.initialize(_CONFIG.value.distributed)
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, CheckpointError, FileNotFoundError, train.NonFiniteLossError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
