"""The min-max training step of the ALN (Sec. 2.3, 2.4): one jitted function, data parallel over every device.

The corruption network minimises the objective (``aln_jax.objectives``; Eq. (1)) + lambda_reg * occluded area; the
classifier cross-entropy on the corrupted images, in the steps where its accuracy <= target_accuracy; lambda_reg
adapts (``adapt``, Sec. 2.4). The step's rules, our additions and its data parallelism: ``make_train_step``.
"""

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from aln_jax import masking, objectives

AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The static part of the config that shapes the compiled step."""

    num_segments: int
    fill_value: float
    fill: str
    fill_sigma: float
    objective: str
    preserve_weight: float
    class_conditional: bool
    logit_bound: float
    target_accuracy: float
    lambda_rate: float
    lambda_min: float
    lambda_max: float
    freeze_classifier: bool
    pretrain_steps: int
    clean_weight: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, c) -> "Settings":
        t = c.train
        return cls(int(c.slic.max_segments), float(c.aln.fill_value), str(c.aln.fill), float(c.aln.fill_sigma),
                   str(t.objective), float(t.preserve_weight), bool(c.aln.class_conditional), float(t.logit_bound),
                   float(t.target_accuracy),
                   float(t.lambda_rate), float(t.lambda_min), float(t.lambda_max), bool(t.freeze_classifier),
                   int(t.classifier_pretrain_steps), float(t.classifier_clean_weight),
                   tuple(float(v) for v in c.model.mean), tuple(float(v) for v in c.model.std))


def normalise(images: jax.Array, s: Settings) -> jax.Array:
    """uint8 NHWC -> float32 in the classifier's normalised space."""
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(s.mean)) / jnp.asarray(s.std)


def corruption_objective(classifier, images: jax.Array, masks: jax.Array, labels: jax.Array, keys: jax.Array,
                         s: Settings) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(per-image objective, logits on the occluded images, the occluded images) of 0/1 ``masks`` (B, H, W):
    the occluded pixels filled per ``s.fill`` (each image's fill drawn from its key), and for objectives that need
    it the classifier's pass on the kept images (everything but the mask filled) in the same call."""
    fills = jax.vmap(lambda x, k: masking.fill(x, s.fill, s.fill_value, s.fill_sigma, jax.random.fold_in(k, 1)))(
        images, keys)
    occluded = masking.corrupt(images, masks, fills)
    if objectives.needs_kept_image(s.objective):
        logits, kept = jnp.split(classifier(jnp.concatenate([occluded, masking.corrupt(images, 1 - masks, fills)])),
                                 2)
    else:
        logits, kept = classifier(occluded), None
    return objectives.per_image(s.objective, logits, labels, kept, s.preserve_weight), logits, occluded


def adapt(lambda_reg: jax.Array, accuracy: jax.Array, s: Settings) -> tuple[jax.Array, jax.Array]:
    """Sec. 2.4's balance: (next lambda_reg, whether the classifier trains this step)."""
    above = accuracy > s.target_accuracy
    new = jnp.clip(lambda_reg * jnp.exp(jnp.where(above, -s.lambda_rate, s.lambda_rate)), s.lambda_min, s.lambda_max)
    return new, jnp.logical_not(above) & (not s.freeze_classifier)


def init_state(corruption: nnx.Module, classifier: nnx.Module, tx_corruption, tx_classifier,
               lambda_reg: float) -> dict:
    """The training state as one plain pytree of numpy/JAX arrays: both networks' parameters and optax states,
    ``lambda_reg`` and ``step``."""
    pc = nnx.to_pure_dict(nnx.state(corruption, nnx.Param))
    pk = nnx.to_pure_dict(nnx.state(classifier, nnx.Param))
    return dict(corruption=dict(params=pc, opt_state=tx_corruption.init(pc)),
                classifier=dict(params=pk, opt_state=tx_classifier.init(pk)),
                lambda_reg=jnp.asarray(lambda_reg, jnp.float32), step=jnp.asarray(0, jnp.int32))


def _where(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def make_train_step(corruption_def: nnx.GraphDef, classifier_def: nnx.GraphDef, tx_corruption, tx_classifier,
                    s: Settings, mesh: Mesh):
    """``train_step(state, batch, key, step) -> (state, metrics)``: jitted programs, the state donated; ``step``
    (the host's copy of ``state['step']``) picks classifier pre-training or the adversarial step.

    Per step, with the classifier's accuracy ``acc`` on this global batch of corrupted images (before the update):
      corruption loss  = mean over images of the objective (``train.objective``, ``aln_jax.objectives``; Eq. (1):
                         c_top - mean_{j != top} c_j) + lambda_reg * mean occluded fraction
      classifier loss  = softmax cross-entropy with the true label on the corrupted image (minimised; the paper's
                         "maximise" is a typo: the classifier must keep recognising corrupted images)
      the corruption network always takes an Adam step on its loss;
      the classifier takes one on its loss only when acc <= target_accuracy (and it is not frozen);
      lambda_reg <- clip(lambda_reg * exp(-rate if acc > target_accuracy else +rate), lambda_min, lambda_max).
    With ``classifier_clean_weight`` w > 0 (our addition, 0 is the paper) the classifier's loss adds w times its
    cross-entropy on the clean images, so that it keeps knowing the classes while it learns the corrupted images.
    During the first ``classifier_pretrain_steps`` steps (our addition, 0 disables it) only the classifier trains, on
    the clean images, and lambda_reg stays: the game then starts against a classifier that recognises the objects,
    which the Sec. 3.4 ablation (classifier frozen after that) needs.

    The step is per-device code under ``jax.shard_map`` over a one-axis ``data`` mesh of every device of every
    process (the pmap style): each device takes its slice of the global batch, gradients are averaged with ``pmean``
    and the counts of correct predictions summed with ``psum``, so every device takes the same training decision and
    holds the same state.

    ``batch``: ``images`` uint8 (B, H, W, 3), ``labels`` int32 (B,), ``segments`` uint8 (B, H, W), ``position``
    int32 (B,) each image's row in the global batch; all sharded along ``data``. The Gumbel noise of an image is
    drawn from (key, step, position), so it does not depend on how many devices share the batch.
    """

    def classifier_update(state, inputs, labels, clean=None):
        """One classifier step on ``inputs`` (gradient pmean'd), plus ``clean_weight`` times the loss on ``clean``
        when given: (new classifier entry, loss)."""
        params_k = state["classifier"]["params"]

        def loss_fn(params):
            model = nnx.merge(classifier_def, params)
            loss = optax.softmax_cross_entropy_with_integer_labels(model(inputs), labels).mean()
            if clean is not None and s.clean_weight:
                loss += s.clean_weight * optax.softmax_cross_entropy_with_integer_labels(model(clean), labels).mean()
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params_k)
        grads = jax.lax.pmean(grads, AXIS)
        updates, opt_k = tx_classifier.update(grads, state["classifier"]["opt_state"], params_k)
        return dict(params=optax.apply_updates(params_k, updates), opt_state=opt_k), loss

    def accuracy(logits, labels):
        counts = jax.lax.psum(jnp.stack([jnp.sum(logits.argmax(-1) == labels), labels.shape[0]]), AXIS)
        return counts[0].astype(jnp.float32) / counts[1]

    def metrics_of(state, train_classifier, losses, accuracy_corrupted, accuracy_clean, grad_norm):
        losses = jax.lax.pmean(jnp.stack(losses), AXIS)
        return dict(corruption_loss=losses[0], classifier_loss=losses[1], occluded_area=losses[2],
                    mean_probability=losses[3], accuracy_corrupted=accuracy_corrupted, accuracy_clean=accuracy_clean,
                    lambda_reg=state["lambda_reg"], classifier_trained=jnp.asarray(train_classifier, jnp.float32),
                    grad_norm_corruption=grad_norm)

    def pretrain_step(state, images, labels, segments, keys):
        """The classifier alone on the clean images; the corruption network and lambda_reg stay."""
        logits = nnx.merge(classifier_def, state["classifier"]["params"])(images)
        new_k, loss_k = classifier_update(state, images, labels)
        acc = accuracy(logits, labels)
        zero = jnp.zeros((), jnp.float32)
        return (dict(state, classifier=new_k, step=state["step"] + 1),
                metrics_of(state, True, [zero, loss_k, zero, zero], acc, acc, zero))

    def adversarial_step(state, images, labels, segments, keys):
        """Sec. 2.3-2.4: the corruption network's step on Eq. (1) + area, the classifier's when acc <= target."""
        classifier = nnx.merge(classifier_def, state["classifier"]["params"])

        def corruption_loss(params_c):
            net = nnx.merge(corruption_def, params_c)
            probs = masking.occlusion_probability(net(images, labels if s.class_conditional else None), s.logit_bound)
            masks = jax.vmap(masking.superpixel_mask, (0, 0, 0, None))(probs, segments, keys, s.num_segments)
            per_image, logits, corrupted = corruption_objective(classifier, images, masks, labels, keys, s)
            area = jnp.mean(masks)
            loss = jnp.mean(per_image) + state["lambda_reg"] * area
            return loss, (logits, corrupted, area, jnp.mean(probs))

        params_c = state["corruption"]["params"]
        (loss_c, (logits, corrupted, area, mean_prob)), grads_c = jax.value_and_grad(
            corruption_loss, has_aux=True)(params_c)
        grads_c = jax.lax.pmean(grads_c, AXIS)
        acc = accuracy(logits, labels)
        lambda_next, train_classifier = adapt(state["lambda_reg"], acc, s)
        updates, opt_c = tx_corruption.update(grads_c, state["corruption"]["opt_state"], params_c)
        new_c = dict(params=optax.apply_updates(params_c, updates), opt_state=opt_c)
        trained_k, loss_k = classifier_update(state, jax.lax.stop_gradient(corrupted), labels, images)
        new_k = _where(train_classifier, trained_k, state["classifier"])
        new_state = dict(corruption=new_c, classifier=new_k, lambda_reg=lambda_next, step=state["step"] + 1)
        return new_state, metrics_of(state, train_classifier, [loss_c, loss_k, area, mean_prob], acc,
                                     accuracy(classifier(images), labels), optax.global_norm(grads_c))

    def sharded(local):
        """``local(state, images, labels, segments, keys)`` as per-device code over the mesh, jitted."""

        def per_device(state: dict, batch: dict, key: jax.Array):
            step_key = jax.random.fold_in(key, state["step"])
            keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(batch["position"])
            return local(state, normalise(batch["images"], s), batch["labels"], batch["segments"].astype(jnp.int32),
                         keys)

        # check_vma=False: the pmap semantics, in which a gradient is per device until the explicit pmean (with
        # varying-manual-axes checking on, JAX would psum the gradients of replicated parameters by itself).
        return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()),
                                     check_vma=False), donate_argnums=(0,))

    # Two programs chosen on the host by the step number, not a lax.cond: XLA:CPU misses its fast convolutions
    # inside a conditional's branches (3.3 s against 0.45 s per step, measured at batch 64).
    pretrain, adversarial = sharded(pretrain_step), sharded(adversarial_step)

    def train_step(state: dict, batch: dict, key: jax.Array, step: int):
        return (pretrain if step < s.pretrain_steps else adversarial)(state, batch, key)

    return train_step


def make_mesh() -> Mesh:
    """A one-axis mesh of every device of every process."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def tree_shapes(tree: Any) -> dict:
    """{'a/b/0/c': shape} of a pytree's leaves (arrays or Orbax metadata), for comparing a checkpoint with the
    config; paths are spelt alike whether a level is a dict, a list or a named tuple."""
    return {"/".join(re.findall(r"\w+", jax.tree_util.keystr(k))): tuple(getattr(v, "shape", np.shape(v)))
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}
