"""DeepFool (Moosavi-Dezfooli et al. 2016, Algorithm 2): at x_i, with f'_k = f_k - f_t and w'_k = grad f'_k over
the candidate classes k != t, step to the nearest linearised boundary l = argmin_k |f'_k| / ||w'_k||_2 (Eq. 8):
r_i = |f'_l| w'_l / ||w'_l||^2 (Eq. 9), until argmax f(x_i) != t. The map is the per-pixel L2 norm over channels
of the final perturbation x_adv - x, in [0, 1] pixel space. As torchattacks 3.5.1 ``DeepFool`` (the reference
library); where that differs from the paper: ``attack``.
"""

import jax
import jax.numpy as jnp

from perturb_jax.methods import common

OPTIONS = {
    "steps": common.Option(50, "torchattacks DeepFool (steps)", minimum=1),
    "overshoot": common.Option(0.02, "torchattacks DeepFool (overshoot)", minimum=0.0),
    "candidates": common.Option(10, "DeepFool authors' code (num_classes); torchattacks uses all classes",
                                minimum=2),
    "mean": common.Option((0.485, 0.456, 0.406), "ImageNet; the runner passes model.mean"),
    "std": common.Option((0.229, 0.224, 0.225), "ImageNet; the runner passes model.std"),
}


def attack(logits_fn, pixels, targets, steps, overshoot, candidates, chunk_size):
    """DeepFool on (B, H, W, C) ``pixels`` in [0, 1]; ``logits_fn(pixels) -> (B, classes)``. Returns (adversarial
    pixels, (B,) steps taken, (B,) fooled: argmax of the result != target).

    As torchattacks 3.5.1 ``DeepFool`` (the reference library), where it differs from the paper: the overshoot is
    applied to every step, x_{i+1} = clamp(x_i + (1 + overshoot) r_i, 0, 1) (the paper scales the total,
    x + (1 + overshoot) sum_i r_i, and does not clamp), and t is the given label (the target), not the prediction,
    so an image the model does not classify as t is left unchanged. ``candidates`` follows the authors' code
    (``num_classes=10``): the target and the 9 other highest-scoring classes of the clean image; torchattacks uses
    every class, which is the same when the model has at most ``candidates`` classes. Images are attacked together
    but independently: an image stops (is frozen) once fooled or after ``steps`` steps, as torchattacks' per-image
    loop.

    Each iteration steps every image still running (not fooled, fewer than ``steps`` steps), those images gathered
    in passes of ``group`` images x (candidates - 1) VJPs <= ``chunk_size`` network evaluations, the last fewer
    than ``group`` one at a time: the images that are done cost nothing, so an image that needs many steps does not
    make the batch, or a padded pass, iterate with it."""
    b = pixels.shape[0]
    clean = logits_fn(pixels)
    num_classes = clean.shape[1]
    k = min(candidates, num_classes)
    target_hot = jax.nn.one_hot(targets, num_classes)
    others = jax.lax.top_k(jnp.where(target_hot > 0, -jnp.inf, clean), k - 1)[1]  # (B, k - 1)
    group = common.samples_per_pass(chunk_size, k - 1, b)

    def step(x, t, other):
        """One DeepFool step of running images x: (moved, stepped, fooled)."""
        logits, vjp = jax.vjp(logits_fn, x)
        fooled = jnp.argmax(logits, axis=1) != t
        update = ~fooled
        per_pass = common.samples_per_pass(chunk_size, x.shape[0], k - 1)
        hot = jax.nn.one_hot(t, num_classes)
        cotangents = (jax.nn.one_hot(other, num_classes) - hot[:, None]).transpose(1, 0, 2)  # (k - 1, G, C)

        def gradients():  # w'_k per candidate, (k - 1, G, H, W, C)
            return jax.lax.map(lambda ct: vjp(ct)[0], cotangents, batch_size=per_pass)

        grads = jax.lax.cond(update.any(), gradients, lambda: jnp.zeros((k - 1, *x.shape), x.dtype))
        f_prime = jnp.take_along_axis(logits, other, axis=1) - jnp.sum(logits * hot, axis=1, keepdims=True)
        norms = jnp.sqrt(jnp.sum(grads ** 2, axis=(2, 3, 4))).T  # (G, k - 1)
        nearest = jnp.argmin(jnp.abs(f_prime) / norms, axis=1)
        w = jnp.take_along_axis(grads, nearest[None, :, None, None, None], axis=0)[0]
        f = jnp.take_along_axis(f_prime, nearest[:, None], axis=1)[:, 0]
        norm = jnp.take_along_axis(norms, nearest[:, None], axis=1)[:, 0]
        r = (jnp.abs(f) / norm ** 2)[:, None, None, None] * w
        moved = jnp.where(update[:, None, None, None], jnp.clip(x + (1 + overshoot) * r, 0.0, 1.0), x)
        return moved, update, fooled

    def running(taken, done):
        return ~done & (taken < steps)

    def iteration(state):
        active = running(*state[1:])
        order = jnp.argsort(~active, stable=True)  # the running images first
        count = active.sum()

        def one_pass(size):
            def apply(start, state):
                adv, taken, done = state
                index = jax.lax.dynamic_slice_in_dim(order, start, size)
                moved, stepped, fooled = step(adv[index], targets[index], others[index])
                return adv.at[index].set(moved), taken.at[index].add(stepped), done.at[index].set(fooled)

            return apply

        full = count // group
        state = jax.lax.fori_loop(0, full, lambda j, s: one_pass(group)(j * group, s), state)
        if group == 1:
            return state
        return jax.lax.fori_loop(full * group, count, one_pass(1), state)

    init = (pixels, jnp.zeros(b, jnp.int32), jnp.zeros(b, bool))
    adv, taken, _ = jax.lax.while_loop(lambda state: running(*state[1:]).any(), iteration, init)
    fooled = jnp.argmax(logits_fn(adv), axis=1) != targets
    return adv, taken, fooled


def explain(model, images, targets, key, options):
    del key
    mean = jnp.asarray(options["mean"], images.dtype)
    std = jnp.asarray(options["std"], images.dtype)
    kernels = model.input_grad_kernels()

    def logits_fn(pixels):
        return model((pixels - mean) / std, grad_kernels=kernels)[0]

    # torchattacks takes images in [0, 1]; the clamp only removes the round-off of un-normalising.
    pixels = jnp.clip(images * std + mean, 0.0, 1.0)
    adv, taken, fooled = attack(logits_fn, pixels, targets, options["steps"], options["overshoot"],
                                options["candidates"], options["chunk_size"])
    return {"saliency": jnp.sqrt(jnp.sum((adv - pixels) ** 2, axis=-1)), "steps": taken, "fooled": fooled}


METHOD = common.Method("deepfool", explain, OPTIONS, "Moosavi-Dezfooli et al. 2016; torchattacks DeepFool")
