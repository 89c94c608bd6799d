"""Explains and scores images with the methods of the config (the perceptual ball, Table 1's methods).

  python -m perturb_jax.main --config=configs/guided.py --workdir=/tmp/guided

hands the config and the workdir to ``explain.explain_and_evaluate``. Any field can be overridden, e.g.
``--config.method.rise.num_masks=500``; a misspelt field is an error.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from perturb_jax.runtime import cli
from perturb_jax.explain import job as explain  # noqa: E402

if __name__ == "__main__":
    cli.run_job(explain.explain_and_evaluate, "Config file, e.g. configs/guided.py.",
                "Directory for maps, results and figures (resumable).")
