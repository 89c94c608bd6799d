"""The per-image bound of the ALN objective: each image's superpixel occlusion logits optimised directly.

  python -m aln_jax.per_image --config=configs/aln.py --lambda_reg=4 --steps=300 --robust_steps=600

No corruption network: for each evaluation image, Adam minimises Eq. (1) + lambda_reg * occluded area over one
logit per superpixel, with the same Gumbel-max straight-through decisions and fill value as training (Sec. 2.2-2.3),
against a fixed classifier (``--classifier``, the shipped VGG19_bn by default, its batch norms folded). A corruption
network amortises exactly this optimisation, so its masks cannot localise better than these on the same classifier.
``--robust_steps`` first fine-tunes the classifier on training images whose superpixels are occluded at random
(a rate in [0, 0.5) per image), which stands in for the co-training that teaches it to ignore the grey patches.
Prints the classifier's accuracy on the corrupted images, the occluded area and the ground-truth-known accuracy of
the Sec. 3.2 box (0.7 mean + 0.3 max, largest component).
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

import eval.datasets  # noqa: E402
from aln_jax import data, evaluate, masking, step as step_lib, superpixels  # noqa: E402
from perturb_jax import checkpoint, config as perturb_config  # noqa: E402
from perturb_jax.cli import parse_flags  # noqa: E402
from perturb_jax.models.vgg import FoldedVGG  # noqa: E402

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command line's flags, defined only when run as a program (importing this module defines none)."""
    config_flags.DEFINE_config_file("config", None, "An ALN config (data, SLIC, fill value).", lock_config=True)
    flags.DEFINE_string("classifier", perturb_config.EMBEDDED_CHECKPOINT, "VGG19_bn checkpoint directory.")
    flags.DEFINE_float("lambda_reg", 4.0, "Weight of the occluded area in the objective.")
    flags.DEFINE_integer("steps", 300, "Adam steps per image.")
    flags.DEFINE_float("learning_rate", 0.1, "Adam learning rate on the superpixel logits.")
    flags.DEFINE_integer("robust_steps", 0, "Steps of random-occlusion fine-tuning of the classifier first.")
    flags.DEFINE_integer("num_images", 100, "Evaluation images (the first of config.data.eval_split).")
    flags.mark_flags_as_required(["config"])


def pixel_mask(decisions: jax.Array, segments: jax.Array) -> jax.Array:
    """(B, S) per-superpixel values and (B, H, W) segment ids -> (B, H, W) per-pixel values."""
    return jnp.take_along_axis(decisions, segments.reshape(len(segments), -1), 1).reshape(segments.shape)


def make_mask_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, fill_value: float):
    """``step(logits, opt_state, params, x, segments, labels, lambda_reg, key) -> (logits, opt_state, accuracy)``:
    one Adam step of Eq. (1) + lambda_reg * area on (B, S) superpixel logits, jitted."""

    @jax.jit
    def step(theta, opt_state, params, x, segments, labels, lambda_reg, key):
        def loss_fn(theta):
            decisions = jax.vmap(masking.gumbel_bernoulli)(jax.nn.sigmoid(theta), jax.random.split(key, len(theta)))
            mask = pixel_mask(decisions, segments)
            logits = nnx.merge(graphdef, params)(masking.corrupt(x, mask, fill_value))
            loss = jnp.mean(step_lib.confusion_loss(logits)) + lambda_reg * jnp.mean(mask)
            return loss, jnp.mean(logits.argmax(-1) == labels)

        (_, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(theta)
        updates, opt_state = tx.update(grads, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, accuracy

    return step


def make_robust_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, fill_value: float, num_segments: int):
    """``step(params, opt_state, x, segments, labels, key) -> (params, opt_state, accuracy)``: the classifier's
    cross-entropy on images with each superpixel occluded with probability rate ~ U[0, 0.5) per image, jitted."""

    @jax.jit
    def step(params, opt_state, x, segments, labels, key):
        k_rate, k_mask = jax.random.split(key)
        rate = jax.random.uniform(k_rate, (len(x), 1), maxval=0.5)
        decisions = jax.random.bernoulli(k_mask, rate, (len(x), num_segments)).astype(x.dtype)
        corrupted = masking.corrupt(x, pixel_mask(decisions, segments), fill_value)

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
    graphdef, params = nnx.split(FoldedVGG(checkpoint.load_model(FLAGS.classifier)))
    if FLAGS.robust_steps:
        train_data = data.load_train_data(c.data, c.data.train_split, c.aln.image_size, c.slic,
                                          c.data.cache_dir or data.DEFAULT_CACHE)
        tx = optax.adam(1e-4)
        opt_state, robust_step, accuracies = tx.init(params), make_robust_step(graphdef, tx, s.fill_value,
                                                                                 s.num_segments), []
        for i in range(FLAGS.robust_steps):
            b = data.local_batch(train_data, data.batch_indices(c.seed, i, len(train_data.labels), c.batch_size, 0))
            params, opt_state, accuracy = robust_step(params, opt_state, step_lib.normalise(b["images"], s),
                                                      b["segments"].astype(np.int32), b["labels"], jax.random.key(i))
            accuracies.append(float(accuracy))
        print(f"random-occlusion fine-tuning, {FLAGS.robust_steps} steps: accuracy {np.mean(accuracies[-100:]):.3f} "
              f"over the last 100")
    examples = [ex for ex, _ in zip(eval.datasets.load(c.data, c.data.eval_split)[0], range(FLAGS.num_images))]
    images = np.stack([ex["image"] for ex in examples])
    labels = np.array([ex["label"] for ex in examples], np.int32)
    sp = c.slic
    segments = superpixels.slic_batch(images, sp.n_segments, sp.compactness, sp.sigma, sp.max_segments)
    segments = segments.astype(np.int32)
    x = step_lib.normalise(images, s)
    tx = optax.adam(FLAGS.learning_rate)
    theta = jnp.zeros((len(images), s.num_segments))
    opt_state, mask_step = tx.init(theta), make_mask_step(graphdef, tx, s.fill_value)
    for i in range(FLAGS.steps):
        theta, opt_state, accuracy = mask_step(theta, opt_state, params, x, segments, labels, FLAGS.lambda_reg,
                                               jax.random.key(i))
    maps = np.asarray(pixel_mask(jax.nn.sigmoid(theta), segments))
    ious = np.array([evaluate.box_ops.best_iou(b, ex["boxes"]) for b, ex in zip(evaluate.paper_boxes(maps), examples)])
    print(f"{len(images)} images, lambda_reg {FLAGS.lambda_reg}, {FLAGS.steps} steps: accuracy on corrupted images "
          f"{float(accuracy):.3f}, occluded area {maps.mean():.3f}, GT-known (Sec. 3.2 box) {(ious >= 0.5).mean():.3f}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
