"""Explains and scores images with perturbations on the perceptual ball.

  python -m perturb_jax.main --config=configs/guided.py --workdir=/tmp/guided

hands the config and the workdir to ``explain.explain_and_evaluate``. Any field can be overridden, e.g.
``--config.perturb.lam_perceptual=1000``; a misspelt field is an error.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from perturb_jax import explain  # noqa: E402
from perturb_jax.cli import parse_flags  # noqa: E402
from perturb_jax.checkpoint import CheckpointError  # noqa: E402
from perturb_jax.config import ConfigError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/guided.py.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for maps, results and figures (resumable).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        explain.explain_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
