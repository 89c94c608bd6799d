"""The min-max training step of the ALN (Sec. 2.3, 2.4): one jitted function, data parallel over every device.

The state is one plain pytree: both networks' parameters and optax states, ``lambda_reg`` and ``step``. The step is
per-device code under ``jax.shard_map`` over a one-axis ``data`` mesh of every device of every process (the pmap
style): each device takes its slice of the global batch, gradients are averaged with ``pmean`` and the counts of
correct predictions summed with ``psum``, so every device takes the same training decision and holds the same state.

Per step, with the classifier's accuracy ``acc`` on this global batch of corrupted images (before the update):
  corruption loss  = mean over images of [c_top - mean_{j != top} c_j] + lambda_reg * mean occluded fraction
  classifier loss  = softmax cross-entropy with the true label on the corrupted image (minimised; the paper's
                     "maximise" is a typo: the classifier must keep recognising corrupted images)
  the corruption network always takes an Adam step on its loss;
  the classifier takes one on its loss only when acc <= target_accuracy (and it is not frozen);
  lambda_reg <- clip(lambda_reg * exp(-rate if acc > target_accuracy else +rate), lambda_min, lambda_max).
During the first ``classifier_pretrain_steps`` steps (our addition, 0 disables it) only the classifier trains, on
the clean images, and lambda_reg stays: the game then starts against a classifier that recognises the objects, which
the Sec. 3.4 ablation (classifier frozen after that) needs.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from aln_jax import masking

AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The static part of the config that shapes the compiled step."""

    num_segments: int
    fill_value: float
    target_accuracy: float
    lambda_rate: float
    lambda_min: float
    lambda_max: float
    freeze_classifier: bool
    pretrain_steps: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, c) -> "Settings":
        t = c.train
        return cls(int(c.slic.max_segments), float(c.aln.fill_value), float(t.target_accuracy),
                   float(t.lambda_rate), float(t.lambda_min), float(t.lambda_max), bool(t.freeze_classifier),
                   int(t.classifier_pretrain_steps),
                   tuple(float(v) for v in c.model.mean), tuple(float(v) for v in c.model.std))


def normalise(images: jax.Array, s: Settings) -> jax.Array:
    """uint8 NHWC -> float32 in the classifier's normalised space."""
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(s.mean)) / jnp.asarray(s.std)


def confusion_loss(logits: jax.Array) -> jax.Array:
    """Eq. (1) per image: the top logit minus the mean of the other K - 1 logits (0 when all are equal)."""
    top = jnp.max(logits, axis=-1)
    return top - (jnp.sum(logits, axis=-1) - top) / (logits.shape[-1] - 1)


def adapt(lambda_reg: jax.Array, accuracy: jax.Array, pretrain: jax.Array, s: Settings):
    """Sec. 2.4's balance: (next lambda_reg, whether the classifier trains, whether the corruption network trains)."""
    above = accuracy > s.target_accuracy
    new = jnp.clip(lambda_reg * jnp.exp(jnp.where(above, -s.lambda_rate, s.lambda_rate)), s.lambda_min, s.lambda_max)
    train_classifier = pretrain | (jnp.logical_not(above) & (not s.freeze_classifier))
    return jnp.where(pretrain, lambda_reg, new), train_classifier, jnp.logical_not(pretrain)


def init_state(corruption: nnx.Module, classifier: nnx.Module, tx_corruption, tx_classifier,
               lambda_reg: float) -> dict:
    """The training state as a plain pytree of numpy/JAX arrays."""
    pc = nnx.to_pure_dict(nnx.state(corruption, nnx.Param))
    pk = nnx.to_pure_dict(nnx.state(classifier, nnx.Param))
    return dict(corruption=dict(params=pc, opt_state=tx_corruption.init(pc)),
                classifier=dict(params=pk, opt_state=tx_classifier.init(pk)),
                lambda_reg=jnp.asarray(lambda_reg, jnp.float32), step=jnp.asarray(0, jnp.int32))


def _where(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def make_train_step(corruption_def: nnx.GraphDef, classifier_def: nnx.GraphDef, tx_corruption, tx_classifier,
                    s: Settings, mesh: Mesh):
    """``train_step(state, batch, key) -> (state, metrics)``, jitted, the state donated.

    ``batch``: ``images`` uint8 (B, H, W, 3), ``labels`` int32 (B,), ``segments`` uint8 (B, H, W), ``position``
    int32 (B,) each image's row in the global batch; all sharded along ``data``. The Gumbel noise of an image is
    drawn from (key, step, position), so it does not depend on how many devices share the batch.
    """

    def local_step(state: dict, batch: dict, key: jax.Array):
        images = normalise(batch["images"], s)
        labels, segments = batch["labels"], batch["segments"].astype(jnp.int32)
        step_key = jax.random.fold_in(key, state["step"])
        keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(batch["position"])
        params_k = state["classifier"]["params"]

        def corruption_loss(params_c):
            probs = jax.nn.sigmoid(nnx.merge(corruption_def, params_c)(images))
            masks = jax.vmap(masking.superpixel_mask, (0, 0, 0, None))(probs, segments, keys, s.num_segments)
            corrupted = masking.corrupt(images, masks, s.fill_value)
            logits = nnx.merge(classifier_def, params_k)(corrupted)
            area = jnp.mean(masks)
            loss = jnp.mean(confusion_loss(logits)) + state["lambda_reg"] * area
            return loss, (logits, corrupted, area, jnp.mean(probs))

        (loss_c, (logits, corrupted, area, mean_prob)), grads_c = jax.value_and_grad(
            corruption_loss, has_aux=True)(state["corruption"]["params"])
        pretrain = state["step"] < s.pretrain_steps
        corrupted = jax.lax.stop_gradient(jnp.where(pretrain, images, corrupted))

        def classifier_loss(params):
            model = nnx.merge(classifier_def, params)
            return optax.softmax_cross_entropy_with_integer_labels(model(corrupted), labels).mean()

        loss_k, grads_k = jax.value_and_grad(classifier_loss)(params_k)
        grads_c, grads_k = jax.lax.pmean((grads_c, grads_k), AXIS)
        clean_logits = nnx.merge(classifier_def, params_k)(images)
        counts = jax.lax.psum(jnp.stack([jnp.sum(logits.argmax(-1) == labels), jnp.sum(clean_logits.argmax(-1) == labels),
                                         labels.shape[0]]).astype(jnp.float32), AXIS)
        accuracy, clean_accuracy = counts[0] / counts[2], counts[1] / counts[2]
        lambda_next, train_classifier, train_corruption = adapt(state["lambda_reg"], accuracy, pretrain, s)

        updates, opt_c = tx_corruption.update(grads_c, state["corruption"]["opt_state"], state["corruption"]["params"])
        new_c = _where(train_corruption, dict(params=optax.apply_updates(state["corruption"]["params"], updates),
                                              opt_state=opt_c), state["corruption"])
        updates, opt_k = tx_classifier.update(grads_k, state["classifier"]["opt_state"], params_k)
        new_k = _where(train_classifier, dict(params=optax.apply_updates(params_k, updates), opt_state=opt_k),
                       state["classifier"])
        losses = jax.lax.pmean(jnp.stack([loss_c, loss_k, area, mean_prob]), AXIS)
        metrics = dict(corruption_loss=losses[0], classifier_loss=losses[1], occluded_area=losses[2],
                       mean_probability=losses[3], accuracy_corrupted=accuracy, accuracy_clean=clean_accuracy,
                       lambda_reg=state["lambda_reg"], classifier_trained=train_classifier.astype(jnp.float32),
                       grad_norm_corruption=optax.global_norm(grads_c))
        new_state = dict(corruption=new_c, classifier=new_k, lambda_reg=lambda_next, step=state["step"] + 1)
        return new_state, metrics

    # check_vma=False: the pmap semantics, in which a gradient is per device until the explicit pmean (with
    # varying-manual-axes checking on, JAX would psum the gradients of replicated parameters by itself).
    sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()),
                            check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,))


def make_mesh() -> Mesh:
    """A one-axis mesh of every device of every process."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def tree_shapes(tree: Any) -> dict:
    """{path: shape} of a pytree's leaves, for comparing a checkpoint with the config."""
    return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in jax.tree_util.tree_leaves_with_path(tree)}
