"""L-BFGS without line search, step for step as ``torch.optim.LBFGS(line_search_fn=None)``.

The authors' code runs one ``LBFGS.step`` with lr 1, history 100 and ``max_iter`` iterations. Matching it needs the
same first step (length ``min(1, 1/||g||_1) * lr``), the same curvature test (``y.s > 1e-10``), the same initial
Hessian scale (``y.s / y.y``) and the same stopping tests; ``optax.lbfgs`` differs in all but the last, so this is
written out. It minimises one flat vector; batches are ``vmap``ped, and a converged image stops changing while the
others go on (``vmap`` of ``while_loop`` runs until every predicate is false, selecting per element).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class LbfgsResult(NamedTuple):
    x: jax.Array
    loss: jax.Array  # loss at ``x``
    steps: jax.Array  # iterations taken (updates of x)
    failed: jax.Array  # a non-finite loss or gradient was met; ``x`` is the last finite iterate


class _State(NamedTuple):
    x: jax.Array
    loss: jax.Array
    g: jax.Array
    g_prev: jax.Array
    d: jax.Array
    t: jax.Array
    s_hist: jax.Array
    y_hist: jax.Array
    rho: jax.Array
    ptr: jax.Array
    h_diag: jax.Array
    k: jax.Array
    done: jax.Array
    failed: jax.Array


def _two_loop(g, s_hist, y_hist, rho, ptr, h_diag):
    """Direction -H g by the two-loop recursion; empty history slots have rho = 0 and do nothing."""
    m = rho.shape[0]

    def newest_first(j, carry):
        q, al = carry
        i = (ptr - 1 - j) % m
        a = rho[i] * jnp.vdot(s_hist[i], q)
        return q - a * y_hist[i], al.at[i].set(a)

    q, al = jax.lax.fori_loop(0, m, newest_first, (-g, jnp.zeros_like(rho)))

    def oldest_first(j, r):
        i = (ptr + j) % m
        be = rho[i] * jnp.vdot(y_hist[i], r)
        return r + s_hist[i] * (al[i] - be)

    return jax.lax.fori_loop(0, m, oldest_first, q * h_diag)


def minimize(value_and_grad: Callable, x0: jax.Array, *, max_iter: int, lr: float = 1.0, history_size: int = 100,
             tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, max_eval: int | None = None) -> LbfgsResult:
    """Minimises ``f`` from ``x0`` (a flat vector) as one ``torch.optim.LBFGS.step`` with no line search.

    ``max_eval`` defaults to torch's ``max_iter * 5 // 4``; it counts the first evaluation and one per iteration.
    """
    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    loss0, g0 = value_and_grad(x0)
    n, dtype = x0.shape[0], x0.dtype
    state = _State(
        x=x0, loss=loss0, g=g0, g_prev=g0, d=jnp.zeros_like(x0), t=jnp.zeros((), dtype),
        s_hist=jnp.zeros((history_size, n), dtype), y_hist=jnp.zeros((history_size, n), dtype),
        rho=jnp.zeros((history_size,), dtype), ptr=jnp.zeros((), jnp.int32), h_diag=jnp.ones((), dtype),
        k=jnp.zeros((), jnp.int32),
        done=jnp.abs(g0).max() <= tolerance_grad, failed=~(jnp.isfinite(loss0) & jnp.all(jnp.isfinite(g0))))

    def cond(s: _State):
        return ~s.done & ~s.failed & (s.k < max_iter)

    def body(s: _State):
        k = s.k + 1
        first = k == 1
        y = s.g - s.g_prev
        step = s.d * s.t
        ys = jnp.vdot(y, step)
        push = ~first & (ys > 1e-10)
        s_hist = jnp.where(push, s.s_hist.at[s.ptr].set(step), s.s_hist)
        y_hist = jnp.where(push, s.y_hist.at[s.ptr].set(y), s.y_hist)
        rho = jnp.where(push, s.rho.at[s.ptr].set(1.0 / ys), s.rho)
        ptr = jnp.where(push, (s.ptr + 1) % history_size, s.ptr)
        h_diag = jnp.where(push, ys / jnp.vdot(y, y), s.h_diag)
        d = jnp.where(first, -s.g, _two_loop(s.g, s_hist, y_hist, rho, ptr, h_diag))
        t = jnp.where(first, jnp.minimum(1.0, 1.0 / jnp.abs(s.g).sum()) * lr, lr).astype(dtype)
        descent = jnp.vdot(s.g, d) <= -tolerance_change
        x = s.x + t * d
        loss, g = value_and_grad(x)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
        accept = descent & finite
        done = (~descent | (k + 1 >= max_eval) | (jnp.abs(g).max() <= tolerance_grad) | (jnp.abs(d * t).max() <= tolerance_change)
                | (jnp.abs(loss - s.loss) < tolerance_change))
        keep = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        return _State(x=keep(x, s.x), loss=keep(loss, s.loss), g=keep(g, s.g), g_prev=s.g, d=d, t=t,
                      s_hist=s_hist, y_hist=y_hist, rho=rho, ptr=ptr, h_diag=h_diag,
                      k=jnp.where(accept, k, s.k), done=done, failed=descent & ~finite)

    final = jax.lax.while_loop(cond, body, state)
    return LbfgsResult(final.x, final.loss, final.k, final.failed)
