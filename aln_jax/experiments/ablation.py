"""The Sec. 3.4 ablation's figure: the maps of two trained workdirs (co-trained, classifier frozen) side by side.

  python -m aln_jax.experiments.ablation --config=configs/aln.py:paper --workdirs=/tmp/aln,/tmp/aln_frozen \\
      --out=/tmp/ablation.png

Each row is one evaluation image: the image, then each workdir's occlusion map (its latest checkpoint). Prints each
model's mean occluded area (probability >= 0.5) and its classifier's accuracy on these images.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import eval.datasets  # noqa: E402
from aln_jax import predict, report, train  # noqa: E402
from perturb_jax.runtime.cli import parse_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "The config both workdirs were trained with.",
                                          lock_config=True)
_WORKDIRS = flags.DEFINE_list("workdirs", None, "Two trained workdirs: co-trained, then classifier frozen.")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.")
_IMAGES = flags.DEFINE_integer("num_images", 8, "Evaluation images shown.")
flags.mark_flags_as_required(["config", "workdirs", "out"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    examples, _ = eval.datasets.load(config.data, config.data.eval_split)
    batch = [ex for ex, _ in zip(examples, range(config.eval.batch_size))]
    images = np.stack([ex["image"] for ex in batch])
    labels = np.array([ex["label"] for ex in batch])
    maps = []
    for workdir in _WORKDIRS.value:
        state, step = train.latest_state(config, workdir)
        corruption, classifier = train.build_models(config, train.NUM_CLASSES[config.data.name])
        out = predict.make_predict_fn(config, nnx.graphdef(corruption), nnx.graphdef(classifier), state)(images)
        maps.append(out["prob"])
        print(f"{workdir} (step {step}): occluded area {float((out['prob'] >= 0.5).mean()):.3f}, classifier "
              f"accuracy on these clean images {float((out['logits'].argmax(-1) == labels).mean()):.3f}")
    n = _IMAGES.value
    report.ablation_figure(_OUT.value, images[:n], maps[0][:n], maps[1][:n])


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
