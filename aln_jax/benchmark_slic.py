"""Images per second of the host-side SLIC (paper Sec. 2.2) on embedded training images, and segments per image.

  python -m aln_jax.benchmark_slic --num_images=2000 --workers=1

Times ``superpixels.slic_batch`` on the first ``--num_images`` clutter_shapes ``default`` training images; with
``--workers`` > 1 the first pass includes starting the pool (its processes import the main module, as with
'spawn'), the second is the steady state; both are printed.
"""

import contextlib
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402

from aln_jax import superpixels  # noqa: E402
from eval.datasets import embedded  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer("num_images", 2000, "Images segmented.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes segmenting (1: this process).")
_N_SEGMENTS = flags.DEFINE_integer("n_segments", 100, "SLIC n_segments.")
_COMPACTNESS = flags.DEFINE_float("compactness", 10.0, "SLIC compactness.")
_SIGMA = flags.DEFINE_float("sigma", 0.0, "SLIC Gaussian smoothing.")
_MAX_SEGMENTS = flags.DEFINE_integer("max_segments", 256, "Cap on segments per image.")


def main(argv):
    del argv
    data_config = ml_collections.ConfigDict(dict(name="clutter_shapes", builder_config="default", data_dir=""))
    images, _ = next(embedded.tf_dataset(data_config, "train", _NUM_IMAGES.value).take(1).as_numpy_iterator())
    args = (_N_SEGMENTS.value, _COMPACTNESS.value, _SIGMA.value, _MAX_SEGMENTS.value)
    workers = _WORKERS.value
    t = time.perf_counter()
    with superpixels.process_pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        superpixels.slic_batch(images, *args, executor=pool)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        segments = superpixels.slic_batch(images, *args, executor=pool)
        warm = time.perf_counter() - t
    counts = segments.reshape(len(segments), -1).max(axis=1).astype(int) + 1
    print(f"{len(images)} images {images.shape[1]}x{images.shape[2]}, {workers} worker(s): "
          f"{len(images) / warm:.0f} images/s ({len(images) / cold:.0f} with the pool's start); "
          f"segments per image (n_segments={args[0]}): "
          f"min {counts.min()}, mean {counts.mean():.1f}, max {counts.max()}")


if __name__ == "__main__":
    app.run(main)
