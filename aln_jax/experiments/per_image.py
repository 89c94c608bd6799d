"""The per-image bound of the ALN objective, optionally after random-occlusion fine-tuning of the classifier.

  python -m aln_jax.experiments.per_image --config=configs/aln.py:paper --lambda_reg=4 --steps=300 --robust_steps=600

Prints the classifier's accuracy with ``aln_jax.experiments.diagnose``'s 'optimum from nothing' masks (Sec. 2.2-2.3)
occluded, their area and their GT-known accuracy (Sec. 3.2 box); why this bounds the ALN: docs/design-notes.md.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from aln_jax import data, masking, step as step_lib, superpixels  # noqa: E402
from aln_jax.experiments import diagnose  # noqa: E402
from perturb_jax.runtime import checkpoint, vgg  # noqa: E402
from perturb_jax.runtime.cli import parse_flags  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command line's flags, defined only when run as a program (importing this module defines none)."""
    config_flags.DEFINE_config_file("config", None, "An ALN config (data, SLIC, objective, fill).", lock_config=True)
    flags.DEFINE_string("classifier", checkpoint.EMBEDDED, "VGG19_bn checkpoint directory.")
    flags.DEFINE_float("lambda_reg", 4.0, "Weight of the occluded area in the objective.")
    flags.DEFINE_integer("steps", 300, "Adam steps per image.")
    flags.DEFINE_float("learning_rate", diagnose.LEARNING_RATE, "Adam learning rate on the superpixel logits.")
    flags.DEFINE_integer("robust_steps", 0, "Steps of random-occlusion fine-tuning of the classifier first.")
    flags.DEFINE_integer("num_images", 100, "Evaluation images (the first of config.data.eval_split).")
    flags.mark_flags_as_required(["config"])


def make_robust_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, s: step_lib.Settings):
    """``step(params, opt_state, x, segments, labels, key) -> (params, opt_state, accuracy)``: the classifier's
    cross-entropy on images with each superpixel occluded with probability rate ~ U[0, 0.5) per image (filled per
    ``s.fill``), jitted. ``--robust_steps`` of it first fine-tune the classifier on training images occluded so at
    random, which stands in for the co-training that teaches it to ignore the occluders."""

    @jax.jit
    def step(params, opt_state, x, segments, labels, key):
        k_rate, k_mask, k_fill = jax.random.split(key, 3)
        rate = jax.random.uniform(k_rate, (len(x), 1), maxval=0.5)
        decisions = jax.random.bernoulli(k_mask, rate, (len(x), s.num_segments)).astype(x.dtype)
        fills = jax.vmap(lambda xi, k: masking.fill(xi, s.fill, s.fill_value, s.fill_sigma, k))(
            x, jax.random.split(k_fill, len(x)))
        corrupted = masking.corrupt(x, diagnose.to_pixels(decisions, segments), fills)

        def loss_fn(params):
            logits = nnx.merge(graphdef, params)(corrupted)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, jnp.mean(logits.argmax(-1) == labels)

        (_, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, accuracy

    return step


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    c = FLAGS.config
    s = step_lib.Settings.from_config(c)
    graphdef, params = nnx.split(vgg.folded(checkpoint.load_model(FLAGS.classifier)))
    if FLAGS.robust_steps:
        train_data = data.load_train_data(c.data, c.data.train_split, c.aln.image_size, c.slic,
                                          c.data.cache_dir or data.DEFAULT_CACHE)
        tx = optax.adam(1e-4)
        opt_state, robust_step, accuracies = tx.init(params), make_robust_step(graphdef, tx, s), []
        for i in range(FLAGS.robust_steps):
            b = data.local_batch(train_data, data.batch_indices(c.seed, i, len(train_data.labels), c.batch_size, 0))
            params, opt_state, accuracy = robust_step(params, opt_state, step_lib.normalise(b["images"], s),
                                                      b["segments"].astype(np.int32), b["labels"], jax.random.key(i))
            accuracies.append(float(accuracy))
        print(f"random-occlusion fine-tuning, {FLAGS.robust_steps} steps: accuracy {np.mean(accuracies[-100:]):.3f} "
              f"over the last 100")
    examples = diagnose.load_examples(c, FLAGS.num_images)
    images, labels, boxes = examples["images"], examples["labels"], examples["boxes"]
    sp = c.slic
    segments = superpixels.slic_batch(images, sp.n_segments, sp.compactness, sp.sigma, sp.max_segments,
                                      sp.workers).astype(np.int32)
    classifier_fn = lambda p, x: nnx.merge(graphdef, p)(x)  # noqa: E731
    # No corruption network: for each evaluation image, Adam on one logit per superpixel, minimising the config's
    # objective + lambda_reg * occluded area with the same Gumbel-max straight-through decisions and fill as training
    # (Sec. 2.2-2.3), against a fixed classifier (--classifier, the shipped VGG19_bn by default, its batch norms
    # folded): the 'optimum from nothing' of ``aln_jax.experiments.diagnose``.
    logits = diagnose.optimise_masks(classifier_fn, params, images, labels, segments,
                                     np.zeros((len(images), s.num_segments), np.float32), s, FLAGS.lambda_reg,
                                     FLAGS.steps, FLAGS.learning_rate, c.eval.batch_size)
    # The final masks are sigmoid >= 0.5; the Sec. 3.2 box is 0.7 mean + 0.3 max, largest component.
    row = diagnose.evaluate_masks(classifier_fn, params, images, labels, segments, (logits >= 0).astype(np.float32),
                                  s, FLAGS.lambda_reg, boxes, c.eval.batch_size)
    print(f"{len(images)} images, lambda_reg {FLAGS.lambda_reg}, {FLAGS.steps} steps: accuracy on corrupted images "
          f"{row['accuracy']:.3f}, occluded area {row['area']:.3f}, GT-known (Sec. 3.2 box) "
          f"{diagnose.cell(row['gt_known'])}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
