"""The explainer benchmarks' per-configuration measurement, in-process (embedded model, batch 1, 12 and 4 steps),
and their shared set-up (``benchmarks.common``)."""

import numpy as np
import pytest

from benchmarks import common, explainer_vs_torch

POSITIVE = ("call_s", "call_s_min", "ms_per_step", "images_per_s", "peak_mb", "steps")


# JAX: ~25 s on two idle cores (model build, two compilations), over 40 s when they are shared.
@pytest.mark.parametrize("impl", [pytest.param("jax", marks=pytest.mark.slow), "torch"])
def test_measure_embedded_batch1(impl):
    if impl == "torch":
        pytest.importorskip("torch")
    r = explainer_vs_torch.measure(impl, "embedded", 1, steps=12, repeats=1)
    assert r["impl"] == impl and r["model"] == "embedded" and r["batch_size"] == 1
    assert r["steps"] == 12 and r["steps_lo"] == 4
    # The per-step cost is a difference of two timings (it can come out negative on a loaded machine): check that
    # it is the difference the docstring says.
    assert r["marginal_ms_per_step"] == pytest.approx(1e3 * (r["call_s_min"] - r["call_s_lo"]) / 8)
    for key in POSITIVE + ("bare_ms",):
        assert r[key] > 0, key
    assert r["weights"] and r["memory_method"]
    if impl == "jax":
        for key in ("compile_s", "trace_lower_s", "planned_mb", "flops_per_step", "tflops"):
            assert r[key] > 0, key
        assert r["failed"] == 0


def test_torch_state_dict_inverts_the_conversion():
    pytest.importorskip("torch")
    tmodel, pure, _ = common.build_weights("embedded")
    back = common.torch_state_dict(pure)
    for k, v in tmodel.state_dict().items():
        np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)


def test_torch_iterations_match_lbfgs():
    torch = pytest.importorskip("torch")
    for max_iter in range(1, 13):
        x = torch.ones(5, requires_grad=True)
        opt = torch.optim.LBFGS([x], max_iter=max_iter, tolerance_grad=0, tolerance_change=0)
        calls = []

        def closure():
            calls.append(1)
            opt.zero_grad()
            loss = (x ** 2 * torch.arange(1.0, 6.0)).sum()
            loss.backward()
            return loss

        opt.step(closure)
        assert common.torch_iterations(max_iter, len(calls)) == opt.state[x]["n_iter"], max_iter


@pytest.mark.slow  # ~20 s: two eager model builds and an Orbax round trip.
def test_checkpoint_weights_reach_both_models(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from perturb_jax.runtime import checkpoint, convert_weights

    source, pure, _ = common.build_weights("embedded", seed=1)
    path = str(tmp_path / "ckpt")
    checkpoint.save_model(convert_weights.build_model(pure, 10, 8), path, num_classes=10, width_divisor=8)
    monkeypatch.setattr(common.config, "EMBEDDED_CHECKPOINT", path)
    tmodel, loaded, weights = common.build_weights("embedded", seed=0)
    assert weights.startswith("trained checkpoint")
    np.testing.assert_array_equal(loaded["fc"][0]["kernel"], pure["fc"][0]["kernel"])
    for k, v in source.state_dict().items():
        np.testing.assert_array_equal(tmodel.state_dict()[k].numpy(), v.numpy(), err_msg=k)


def test_marginal_cost_from_two_step_counts():
    """Calls of 1.0 s at 30 steps and 0.4 s at 10 (fastest of each), bare pass 20 ms: 30 ms per step, 100 ms once."""
    r = explainer_vs_torch._marginal([1.2, 1.0], 30, [0.4, 0.5], 10, [0.03, 0.02])
    assert r["marginal_ms_per_step"] == pytest.approx(30.0) and r["once_ms"] == pytest.approx(100.0)
    assert r["bare_ms"] == pytest.approx(20.0) and r["step_over_bare"] == pytest.approx(1.5)


def test_bare_pass_is_the_same_computation_in_jax_and_torch():
    torch = pytest.importorskip("torch")
    from flax import nnx

    from perturb_jax.runtime import convert_weights
    from benchmarks.references import torch_reference

    tmodel, pure, _ = common.build_weights("embedded")
    graphdef, state = nnx.split(convert_weights.build_model(pure, 10, 8))
    x = common.images(2, 64)
    layers = common.settings(2).relu_layers
    ours = np.asarray(common.bare_pass_jax(graphdef, layers)(state, x))
    z = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    logits, acts = torch_reference.forward_with_relus(tmodel.eval(), z, layers)
    (logits[:, 0].sum() + sum(a.sum() for a in acts.values())).backward()
    theirs = z.grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
