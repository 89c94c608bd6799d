"""A process of the ALN's multi-device tests, started by ``tests/test_aln_train.py`` with its own XLA flags.

  python tests/aln_worker.py steps OUT.npz            # a few steps on a fixed global batch, every local device
  python tests/aln_worker.py train WORKDIR OUT.npz [coordinator num_processes process_id] [--set key=value ...]

writes the final state (flattened) to OUT.npz. ``train`` runs ``aln_jax.train.train`` on the tiny config, joining a
multi-process job when a coordinator is given.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import logging  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from aln_jax import config as config_lib, step as step_lib, train  # noqa: E402
from perturb_jax.runtime import distributed  # noqa: E402


def flat(state) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}


def steps(out: str, num_steps: int = 3) -> None:
    c = config_lib.get_config("paper,tiny")
    c.train.classifier_pretrain_steps = 1
    c.train.target_accuracy = 0.3
    corruption, classifier = train.build_models(c, 10)
    tx_c, tx_k = optax.adam(1e-2), optax.adam(1e-2)
    mesh = step_lib.make_mesh()
    fn = step_lib.make_train_step(nnx.graphdef(corruption), nnx.graphdef(classifier), tx_c, tx_k,
                                  step_lib.Settings.from_config(c), mesh)
    state = jax.device_put(step_lib.init_state(corruption, classifier, tx_c, tx_k, 1.0), NamedSharding(mesh, P()))
    rng = np.random.default_rng(0)
    grid = (np.arange(32)[:, None] // 8 * 4 + np.arange(32)[None, :] // 8).astype(np.uint8)  # 16 superpixels
    metrics = []
    for i in range(num_steps):
        batch = dict(images=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                     labels=rng.integers(0, 10, 8).astype(np.int32),
                     segments=np.broadcast_to(grid, (8, 32, 32)),
                     position=np.arange(8, dtype=np.int32))
        batch = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in batch.items()}
        state, m = fn(state, batch, jax.random.key(0), i)
        metrics.append([float(m[k]) for k in sorted(m)])
    np.savez(out, metrics=np.array(metrics), devices=jax.device_count(), **flat(jax.device_get(state)))


def train_job(workdir: str, out: str, args: list[str]) -> None:
    c = config_lib.get_config("paper,tiny")
    sets = [a.split("=", 1) for a in args if "=" in a]
    positional = [a for a in args if "=" not in a]
    if positional:
        c.distributed.coordinator_address = positional[0]
        c.distributed.num_processes, c.distributed.process_id = int(positional[1]), int(positional[2])
    for key, value in sets:
        node = c
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = type(node[leaf])(value)
    distributed.initialize(c.distributed)
    config_lib.validate(c, jax.device_count(), jax.process_count())
    train.check_workdir(c, workdir)
    state = train.train(c, workdir)
    np.savez(out, processes=jax.process_count(), devices=jax.device_count(), **flat(state))


if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    if sys.argv[1] == "steps":
        steps(sys.argv[2])
    else:
        train_job(sys.argv[2], sys.argv[3], sys.argv[4:])
