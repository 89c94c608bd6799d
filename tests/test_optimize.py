"""The per-image minimisers: step-for-step parity with torch's L-BFGS, hand-checked steps, vmap = loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from perturb_jax.methods.perceptual_ball import lbfgs, optimize


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


X0 = np.array([-1.2, 1.0, -0.5, 0.8, 1.3])


def test_first_step_is_torch_first_step():
    """One iteration: x1 = x0 - min(1, 1/||g||_1) * lr * g."""
    with jax.enable_x64(True):
        g = np.asarray(jax.grad(rosenbrock)(jnp.asarray(X0)))
        result = lbfgs.minimize(jax.value_and_grad(rosenbrock), jnp.asarray(X0), max_iter=1, lr=0.5)
        np.testing.assert_allclose(result.x, X0 - min(1.0, 1.0 / np.abs(g).sum()) * 0.5 * g, rtol=1e-12)
        assert int(result.steps) == 1


def test_quadratic_reaches_solution():
    a = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
    b = np.array([1.0, -2.0, 0.5])
    with jax.enable_x64(True):
        f = lambda x: 0.5 * x @ jnp.asarray(a) @ x - jnp.asarray(b) @ x  # noqa: E731
        result = lbfgs.minimize(jax.value_and_grad(f), jnp.zeros(3), max_iter=50, history_size=5,
                                tolerance_grad=1e-10, tolerance_change=0.0)
        np.testing.assert_allclose(result.x, np.linalg.solve(a, b), atol=1e-8)
        assert int(result.steps) < 50  # stopped by the tolerances, not the cap
        assert not bool(result.failed)


@pytest.mark.parametrize("max_iter,lr,history", [(2, 1.0, 100), (5, 0.5, 3), (20, 0.5, 3), (100, 0.5, 3)])
def test_parity_with_torch_lbfgs(max_iter, lr, history):
    torch = pytest.importorskip("torch")
    with jax.enable_x64(True):
        result = lbfgs.minimize(jax.value_and_grad(rosenbrock), jnp.asarray(X0), max_iter=max_iter, lr=lr,
                                history_size=history)
    xt = torch.tensor(X0, requires_grad=True)
    opt = torch.optim.LBFGS([xt], lr=lr, history_size=history, max_iter=max_iter, line_search_fn=None)

    def closure():
        opt.zero_grad()
        loss = torch.sum(100 * (xt[1:] - xt[:-1] ** 2) ** 2 + (1 - xt[:-1]) ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    assert int(result.steps) == opt.state[xt]["n_iter"]
    np.testing.assert_allclose(np.asarray(result.x), xt.detach().numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", optimize.OPTIMIZERS)
def test_each_optimizer_descends(name):
    lr = 0.05 if name == "adam" else 1.0
    result = optimize.minimize(rosenbrock, jnp.asarray(X0, jnp.float32), optimizer=name, max_iter=300,
                               learning_rate=lr, history_size=10, tolerance_grad=1e-7, tolerance_change=1e-9)
    assert float(result.loss) < 0.05 * float(rosenbrock(jnp.asarray(X0)))
    assert not bool(result.failed)


@pytest.mark.parametrize("axis_name", [None, "batch"])
def test_vmap_equals_loop_and_stops_per_image(axis_name):
    """Three problems of different difficulty: vmapped results equal one-by-one runs, each with its own step count,
    with vmap's own batching of the loop and with one loop for the batch (``axis_name``)."""
    def run(x0, scale, axis_name=None):
        return optimize.minimize(lambda x: scale * rosenbrock(x) / 100.0, x0, optimizer="lbfgs", max_iter=60,
                                 learning_rate=1.0, history_size=10, tolerance_grad=1e-2, tolerance_change=1e-9,
                                 axis_name=axis_name)

    with jax.enable_x64(True):  # float64: batched and single reductions differ only in rounding
        scales = jnp.array([1.0, 10.0, 100.0])
        starts = jnp.stack([jnp.asarray(X0) * s for s in (0.1, 0.5, 1.0)])
        batched = jax.jit(jax.vmap(lambda x0, s: run(x0, s, axis_name), axis_name="batch"))(starts, scales)
        single = jax.jit(run)
        for i in range(3):
            one = single(starts[i], scales[i])
            np.testing.assert_allclose(batched.x[i], one.x, rtol=1e-6)
            assert int(batched.steps[i]) == int(one.steps)
    assert len(set(np.asarray(batched.steps).tolist())) > 1


def test_non_finite_loss_is_reported_not_raised():
    """A linear descent walks x0 = 0, 1, 2, 3, then meets NaN at 4: failed, and x is the last finite iterate."""
    f = lambda x: -x[0] + jnp.where(x[0] > 3.5, jnp.nan, 0.0)  # noqa: E731
    result = optimize.minimize(f, jnp.array([0.0]), optimizer="lbfgs", max_iter=20, learning_rate=1.0,
                               history_size=5, tolerance_grad=1e-7, tolerance_change=1e-9)
    assert bool(result.failed)
    np.testing.assert_allclose(result.x, [3.0])
    assert int(result.steps) == 3
