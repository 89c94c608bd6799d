"""Explaining a batch: the per-image optimisation of Eq. (4), vmapped, and the saliency maps it yields."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from perturb_jax.methods.perceptual_ball import objective, optimize, saliency


@dataclasses.dataclass(frozen=True)
class Settings:
    """The static (hashable) part of the config that shapes the compiled program."""

    relu_layers: tuple[int, ...]
    lam_perceptual: float
    lam_pixel: float
    target_margin: float
    reduction: str
    target: str
    optimizer: str
    max_steps: int
    learning_rate: float
    history_size: int
    tolerance_grad: float
    tolerance_change: float
    guided: bool
    smoothing_sigma: float

    @classmethod
    def from_options(cls, o, target: str = "ground_truth") -> "Settings":
        """From the method's options (``method.OPTIONS``: a dict or ``config.method.perceptual_ball``)."""
        return cls(tuple(sorted(int(k) for k in o["relu_layers"])), float(o["lam_perceptual"]),
                   float(o["lam_pixel"]), float(o["target_margin"]), str(o["reduction"]), target, str(o["optimizer"]),
                   int(o["max_steps"]), float(o["learning_rate"]), int(o["history_size"]),
                   float(o["tolerance_grad"]), float(o["tolerance_change"]), bool(o["guided"]),
                   float(o["smoothing_sigma"]))


def explain_batch(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, labels: jax.Array,
                  s: Settings) -> dict[str, jax.Array]:
    """Perturbs each normalised NHWC image on its perceptual ball and returns maps and diagnostics per image.

    Keys: ``saliency`` (the method's map, guided if asked, smoothed), ``gradient`` (|dC_i/dx|, plain), ``predicted``,
    ``target``, ``margin`` and ``margin_adv`` (Eq. 1 before and after), ``loss``, ``steps``, ``failed``.
    """

    model = nnx.merge(graphdef, state)
    grad_kernels = model.input_grad_kernels()  # once per call, outside the optimiser's loop (see VGG19BN.__call__)

    def forward(x, relu_layers=()):
        return model(x, relu_layers, grad_kernels=grad_kernels)

    logits, ref_acts = forward(images, s.relu_layers)
    predicted = jnp.argmax(logits, axis=-1)
    target = predicted if s.target == "predicted" else labels
    grads = jax.vmap(jax.grad(lambda x, t: forward(x[None])[0][0, t]))(images, target)

    def one_image(x, ref, t):
        def value_fn(flat):
            x_adv = flat.reshape(x.shape)
            lg, acts = forward(x_adv[None], s.relu_layers)
            return objective.perceptual_ball_loss(
                lg[0], {k: a[0] for k, a in acts.items()}, ref, x_adv, x, t, lam_perceptual=s.lam_perceptual,
                lam_pixel=s.lam_pixel, target_margin=s.target_margin, reduction=s.reduction)

        return optimize.minimize(value_fn, x.reshape(-1), optimizer=s.optimizer, max_iter=s.max_steps,
                                 learning_rate=s.learning_rate, history_size=s.history_size,
                                 tolerance_grad=s.tolerance_grad, tolerance_change=s.tolerance_change,
                                 axis_name="batch")

    result = jax.vmap(one_image, axis_name="batch")(images, ref_acts, target)
    x_adv = result.x.reshape(images.shape)
    pert = saliency.perturbation_norm(x_adv, images)
    maps = saliency.guided(pert, grads) if s.guided else pert
    maps = jax.vmap(lambda m: saliency.gaussian_smooth(m, s.smoothing_sigma))(maps)
    return dict(saliency=maps, gradient=saliency.gradient_magnitude(grads), predicted=predicted, target=target,
                margin=objective.multiclass_margin(logits, target),
                margin_adv=objective.multiclass_margin(forward(x_adv)[0], target),
                loss=result.loss, steps=result.steps, failed=result.failed)


def make_explain_fn(graphdef: nnx.GraphDef, settings: Settings):
    """``jit(explain_batch)`` with the weights as an argument (closed-over weights would be constant-folded)."""
    return jax.jit(lambda state, images, labels: explain_batch(graphdef, state, images, labels, settings))
