"""The ALN's parts timed apart, to show which one bounds training: the jitted train step (images per second), SLIC on
the host with 1 and ``--slic_workers`` processes, and evaluation (ms per image of the jitted map and class, with the
per-pixel and the superpixel-mean map, and of the box). How it measures, and the figures: BENCHMARKS.md.

  python -m benchmarks.aln --config=configs/aln.py --out=/tmp/aln_bench.json
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from aln_jax import predict, step as step_lib, superpixels, train  # noqa: E402
from eval import boxes  # noqa: E402
from eval.datasets import embedded  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/aln.py", "The ALN config to time (a variant after ':').",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed train steps.")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch", 100, "Images per evaluation call.")
_SLIC_IMAGES = flags.DEFINE_integer("slic_images", 1000, "Images segmented per SLIC measurement.")
_SLIC_WORKERS = flags.DEFINE_integer("slic_workers", 2, "Processes of the second SLIC measurement.")
_OUT = flags.DEFINE_string("out", "", "Where to write the figures as JSON.")


def _images(config, n: int) -> tuple[np.ndarray, np.ndarray]:
    ds = embedded.tf_dataset(config.data, "train", n).take(1).as_numpy_iterator()
    images, labels = next(ds)
    return images, labels


def _timed(fn, repeats: int) -> float:
    """Seconds per call of ``fn`` (which blocks), after one warm-up call."""
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def measure(config, steps: int, eval_batch: int, slic_images: int, slic_workers: int) -> dict:
    images, labels = _images(config, max(config.batch_size, eval_batch, slic_images))
    s = config.slic
    result = {"devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
              "batch_size": config.batch_size}
    for workers in sorted({1, slic_workers}):
        t = time.perf_counter()
        superpixels.slic_batch(images[:slic_images], s.n_segments, s.compactness, s.sigma, s.max_segments,
                               workers=workers)
        result[f"slic_images_per_second_{workers}_workers"] = slic_images / (time.perf_counter() - t)

    corruption, classifier = train.build_models(config, 10)
    tx_c, tx_k = train.optimisers(config)
    mesh = step_lib.make_mesh()
    fn = step_lib.make_train_step(nnx.graphdef(corruption), nnx.graphdef(classifier), tx_c, tx_k,
                                  step_lib.Settings.from_config(config), mesh)
    b = config.batch_size
    segments = superpixels.slic_batch(images[:b], s.n_segments, s.compactness, s.sigma, s.max_segments)
    batch = dict(images=images[:b], labels=labels[:b].astype(np.int32), segments=segments,
                 position=np.arange(b, dtype=np.int32))
    batch = {k: jax.device_put(v, NamedSharding(mesh, P(step_lib.AXIS))) for k, v in batch.items()}
    state = [jax.device_put(step_lib.init_state(corruption, classifier, tx_c, tx_k, 1.0), NamedSharding(mesh, P()))]
    key = jax.random.key(0)

    def one_step():
        state[0], metrics = fn(state[0], batch, key, config.train.classifier_pretrain_steps)
        jax.block_until_ready(metrics)

    t = time.perf_counter()
    one_step()
    result["train_compile_and_first_step_s"] = time.perf_counter() - t
    per_step = _timed(one_step, steps)
    result["train_ms_per_step"] = 1000 * per_step
    result["train_images_per_second"] = b / per_step

    host = jax.tree.map(np.asarray, jax.device_get(state[0]))
    chunk = images[:eval_batch]
    for kind in ("pixel", "superpixel"):
        with config.unlocked():
            config.eval.map = kind
        predict_fn = predict.make_predict_fn(config, nnx.graphdef(corruption), nnx.graphdef(classifier), host)
        result[f"eval_map_ms_per_image_{kind}"] = 1000 * _timed(lambda: predict_fn(chunk), 5) / eval_batch
    maps = predict_fn(chunk)["prob"]
    t = time.perf_counter()
    for m in maps:
        boxes.adaptive_threshold_box(m)
    result["eval_box_ms_per_image"] = 1000 * (time.perf_counter() - t) / eval_batch
    for kind in ("pixel", "superpixel"):
        result[f"eval_ms_per_image_{kind}"] = result[f"eval_map_ms_per_image_{kind}"] + result["eval_box_ms_per_image"]
    return result


def main(argv):
    del argv
    config = _CONFIG.value
    result = measure(config, _STEPS.value, _EVAL_BATCH.value, _SLIC_IMAGES.value, _SLIC_WORKERS.value)
    text = json.dumps(result, indent=1)
    print(text)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            f.write(text)


if __name__ == "__main__":
    app.run(main)
