"""Per-image minimisers inside one jit: the authors' L-BFGS, optax L-BFGS with zoom line search, or Adam.

Each runs a ``lax.while_loop`` over one flat vector, stops early on its own convergence tests, and is ``vmap``ped
over the batch by the caller: images that converge stop changing without a recompilation.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from perturb_jax.methods.perceptual_ball import lbfgs

OPTIMIZERS = ("lbfgs", "optax_lbfgs", "adam")


def _optax_minimize(opt: optax.GradientTransformationExtraArgs, value_and_grad: Callable, value_fn: Callable,
                    x0: jax.Array, *, max_iter: int, tolerance_grad: float, tolerance_change: float,
                    from_state: bool) -> lbfgs.LbfgsResult:
    """An optax update loop with the stopping tests of ``torch.optim.LBFGS`` (gradient and loss change)."""
    opt_state = opt.init(x0)
    loss0, g0 = value_and_grad(x0)
    if from_state:
        value_and_grad = optax.value_and_grad_from_state(value_fn)

    def cond(c):
        _, _, _, _, k, done, failed = c
        return ~done & ~failed & (k < max_iter)

    def body(c):
        x, state, loss, g, k, _, _ = c
        updates, state = opt.update(g, state, x, value=loss, grad=g, value_fn=value_fn)
        x_new = optax.apply_updates(x, updates)
        if from_state:
            loss_new, g_new = value_and_grad(x_new, state=state)
        else:
            loss_new, g_new = value_and_grad(x_new)
        finite = jnp.isfinite(loss_new) & jnp.all(jnp.isfinite(g_new))
        done = (jnp.abs(g_new).max() <= tolerance_grad) | (jnp.abs(loss_new - loss) < tolerance_change)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        return keep(x_new, x), state, keep(loss_new, loss), keep(g_new, g), k + 1, done, ~finite

    failed0 = ~(jnp.isfinite(loss0) & jnp.all(jnp.isfinite(g0)))
    carry = (x0, opt_state, loss0, g0, jnp.zeros((), jnp.int32), jnp.abs(g0).max() <= tolerance_grad, failed0)
    x, _, loss, _, k, _, failed = jax.lax.while_loop(cond, body, carry)
    return lbfgs.LbfgsResult(x, loss, k, failed)


def minimize(value_fn: Callable, x0: jax.Array, *, optimizer: str, max_iter: int, learning_rate: float,
             history_size: int, tolerance_grad: float, tolerance_change: float,
             axis_name: str | None = None) -> lbfgs.LbfgsResult:
    """Minimises the scalar ``value_fn`` over the flat vector ``x0`` with the named optimiser.

    ``axis_name``: the name of the ``vmap`` axis this runs under, if any; L-BFGS uses it to run one loop for the
    batch without copying its history per iteration (``lbfgs.minimize``). The optax loops ignore it."""
    value_and_grad = jax.value_and_grad(value_fn)
    tolerances = dict(tolerance_grad=tolerance_grad, tolerance_change=tolerance_change)
    if optimizer == "lbfgs":
        return lbfgs.minimize(value_and_grad, x0, max_iter=max_iter, lr=learning_rate, history_size=history_size,
                              axis_name=axis_name, **tolerances)
    if optimizer == "optax_lbfgs":
        opt = optax.lbfgs(memory_size=history_size)
        return _optax_minimize(opt, value_and_grad, value_fn, x0, max_iter=max_iter, from_state=True, **tolerances)
    if optimizer == "adam":
        opt = optax.adam(learning_rate)
        return _optax_minimize(opt, value_and_grad, value_fn, x0, max_iter=max_iter, from_state=False, **tolerances)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
