"""L-BFGS without line search, step for step as ``torch.optim.LBFGS(line_search_fn=None)``.

The perceptual ball authors' code runs one ``LBFGS.step`` with lr 1, history 100 and ``max_iter`` iterations;
``minimize`` is that step, written out because ``optax.lbfgs`` does not match it.
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
    s_hist: jax.Array  # ring buffer of steps s_i = x_{i+1} - x_i, one row each
    y_hist: jax.Array  # ring buffer of gradient changes y_i
    sy: jax.Array  # sy[i, j] = s_i . y_j
    yy: jax.Array  # yy[i, j] = y_i . y_j
    sg: jax.Array  # S g and Y g for the current gradient, Y d for the last direction
    yg: jax.Array
    yd: jax.Array
    rho: jax.Array
    ptr: jax.Array
    count: jax.Array
    h_diag: jax.Array
    k: jax.Array
    done: jax.Array
    failed: jax.Array


def _two_loop(g, sg, yg, s_hist, y_hist, sy, yy, rho, ptr, count, h_diag):
    """Direction d = -H g of the two-loop recursion over the ``count`` stored pairs, and Y d.

    The recursion's dot products come from the Gram matrices and from S g, Y g, so a step reads the history twice
    more (Y^T a, S^T c) and runs a scalar recursion over it, instead of 2 x history sequential passes over the image.
    """
    m = rho.shape[0]

    def newest_first(j, a):  # a_i = rho_i s_i.q, q = -g - sum_{k newer} a_k y_k
        i = (ptr - 1 - j) % m
        return a.at[i].set(rho[i] * (-sg[i] - sy[i] @ a))

    a = jax.lax.fori_loop(0, count, newest_first, jnp.zeros_like(rho))
    yr0 = h_diag * (-yg - yy @ a)  # y_i . r0, r0 = h_diag * q

    def oldest_first(j, c):  # c_i = a_i - rho_i y_i.r, r = r0 + sum_{k older} c_k s_k
        i = (ptr - count + j) % m
        return c.at[i].set(a[i] - rho[i] * (yr0[i] + sy[:, i] @ c))

    c = jax.lax.fori_loop(0, count, oldest_first, jnp.zeros_like(rho))
    return h_diag * (-g - y_hist.T @ a) + s_hist.T @ c, yr0 + sy.T @ c


def minimize(value_and_grad: Callable, x0: jax.Array, *, max_iter: int, lr: float = 1.0, history_size: int = 100,
             tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, max_eval: int | None = None,
             axis_name: str | None = None) -> LbfgsResult:
    """Minimises ``f`` from ``x0`` (a flat vector) as one ``torch.optim.LBFGS.step`` with no line search.

    Matching it needs the same first step (length ``min(1, 1/||g||_1) * lr``), the same curvature test
    (``y.s > 1e-10``), the same initial Hessian scale (``y.s / y.y``) and the same stopping tests; ``optax.lbfgs``
    differs in all but the last, so this is written out. Batches are ``vmap``ped, and a converged image stops
    changing while the others go on (``vmap`` of ``while_loop`` runs until every predicate is false, selecting per
    element).

    ``max_eval`` defaults to torch's ``max_iter * 5 // 4``; it counts the first evaluation and one per iteration.
    Under ``vmap(..., axis_name=axis_name)`` the loop runs while any image of the batch is still going (a ``psum``
    over the axis) and a finished image's iteration changes nothing. Without it, ``vmap`` would batch the loop's
    predicate and select between the old and new carry of every image at every iteration, copying the whole
    history (2 x history x pixels per image): a third of a step's time at batch 32 on the embedded model.
    """
    max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
    history_size = min(history_size, max_iter)  # never more pairs than iterations: same result, less memory
    loss0, g0 = value_and_grad(x0)
    n, dtype = x0.shape[0], x0.dtype
    state = _State(
        x=x0, loss=loss0, g=g0, g_prev=g0, d=jnp.zeros_like(x0), t=jnp.zeros((), dtype),
        s_hist=jnp.zeros((history_size, n), dtype), y_hist=jnp.zeros((history_size, n), dtype),
        sy=jnp.zeros((history_size, history_size), dtype), yy=jnp.zeros((history_size, history_size), dtype),
        sg=jnp.zeros((history_size,), dtype), yg=jnp.zeros((history_size,), dtype),
        yd=jnp.zeros((history_size,), dtype),
        rho=jnp.zeros((history_size,), dtype), ptr=jnp.zeros((), jnp.int32), count=jnp.zeros((), jnp.int32),
        h_diag=jnp.ones((), dtype),
        k=jnp.zeros((), jnp.int32),
        done=jnp.abs(g0).max() <= tolerance_grad, failed=~(jnp.isfinite(loss0) & jnp.all(jnp.isfinite(g0))))

    def going(s: _State):
        return ~s.done & ~s.failed & (s.k < max_iter)

    def cond(s: _State):
        return going(s) if axis_name is None else jax.lax.psum(going(s).astype(jnp.int32), axis_name) > 0

    def body(s: _State):
        live = going(s)  # False only for a finished image of a batch that is still going: then nothing changes
        k = s.k + 1
        first = k == 1
        y = s.g - s.g_prev
        step = s.d * s.t
        ys = jnp.vdot(y, step)
        push = live & ~first & (ys > 1e-10)
        p = s.ptr
        new = jnp.arange(history_size) == p
        # One row of each buffer changes (in place inside the loop), not the whole history.
        s_hist = s.s_hist.at[p].set(jnp.where(push, step, s.s_hist[p]))
        y_hist = s.y_hist.at[p].set(jnp.where(push, y, s.y_hist[p]))
        rho = s.rho.at[p].set(jnp.where(push, 1.0 / ys, s.rho[p]))
        sg, yg = s_hist @ s.g, y_hist @ s.g
        # The new pair's Gram row and column from products at hand: rows other than p are unchanged, so
        # S y = S g - (S g_prev, kept from the last step), Y y likewise, and Y s = t (Y d, kept when d was made).
        y_dot_y = jnp.vdot(y, y)
        sy_col = jnp.where(new, ys, sg - s.sg)
        yy_col = jnp.where(new, y_dot_y, yg - s.yg)
        sy_row = jnp.where(new, ys, s.t * s.yd)
        sy = s.sy.at[:, p].set(jnp.where(push, sy_col, s.sy[:, p]))
        sy = sy.at[p, :].set(jnp.where(push, sy_row, sy[p, :]))
        yy = s.yy.at[:, p].set(jnp.where(push, yy_col, s.yy[:, p]))
        yy = yy.at[p, :].set(jnp.where(push, yy_col, yy[p, :]))
        ptr = jnp.where(push, (p + 1) % history_size, p)
        count = jnp.where(push, jnp.minimum(s.count + 1, history_size), s.count)
        h_diag = jnp.where(push, ys / y_dot_y, s.h_diag)
        d, yd = _two_loop(s.g, sg, yg, s_hist, y_hist, sy, yy, rho, ptr, count, h_diag)
        d, yd = jnp.where(first, -s.g, d), jnp.where(first, -yg, yd)
        t = jnp.where(first, jnp.minimum(1.0, 1.0 / jnp.abs(s.g).sum()) * lr, lr).astype(dtype)
        descent = jnp.vdot(s.g, d) <= -tolerance_change
        x = s.x + t * d
        loss, g = value_and_grad(x)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
        accept = live & descent & finite
        done = (~descent | (k + 1 >= max_eval) | (jnp.abs(g).max() <= tolerance_grad)
                | (jnp.abs(d * t).max() <= tolerance_change) | (jnp.abs(loss - s.loss) < tolerance_change))
        keep = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        if_live = lambda new, old: jnp.where(live, new, old)  # noqa: E731
        # The history buffers change only where ``push`` (so never for a finished image); the rest is small.
        return _State(x=keep(x, s.x), loss=keep(loss, s.loss), g=keep(g, s.g), g_prev=if_live(s.g, s.g_prev),
                      d=if_live(d, s.d), t=if_live(t, s.t), s_hist=s_hist, y_hist=y_hist, sy=sy, yy=yy,
                      sg=if_live(sg, s.sg), yg=if_live(yg, s.yg), yd=if_live(yd, s.yd), rho=rho, ptr=ptr,
                      count=count, h_diag=h_diag, k=keep(k, s.k), done=if_live(done, s.done),
                      failed=if_live(descent & ~finite, s.failed))

    final = jax.lax.while_loop(cond, body, state)
    return LbfgsResult(final.x, final.loss, final.k, final.failed)
