"""The benchmark's per-configuration measurement, in-process: embedded model, batch 1, 2 steps."""

import numpy as np
import pytest

from perturb_jax import benchmark

POSITIVE = ("call_s", "call_s_min", "ms_per_step", "images_per_s", "peak_mb", "steps")


# JAX: ~25 s on two idle cores (model build, two compilations), over 40 s when they are shared.
@pytest.mark.parametrize("impl", [pytest.param("jax", marks=pytest.mark.slow), "torch"])
def test_measure_embedded_batch1(impl):
    if impl == "torch":
        pytest.importorskip("torch")
    r = benchmark.measure(impl, "embedded", 1, steps=2, repeats=1)
    assert r["impl"] == impl and r["model"] == "embedded" and r["batch_size"] == 1
    assert r["steps"] == 1  # torch's max_eval = max_iter * 5 // 4 stops max_iter = 2 after one iteration.
    for key in POSITIVE:
        assert r[key] > 0, key
    assert r["weights"] and r["memory_method"]
    if impl == "jax":
        for key in ("compile_s", "trace_lower_s", "planned_mb", "flops_per_step", "tflops"):
            assert r[key] > 0, key
        assert r["failed"] == 0


def test_torch_state_dict_inverts_the_conversion():
    pytest.importorskip("torch")
    tmodel, pure, _ = benchmark.build_weights("embedded")
    back = benchmark.torch_state_dict(pure)
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
        assert benchmark.torch_iterations(max_iter, len(calls)) == opt.state[x]["n_iter"], max_iter


@pytest.mark.slow  # ~20 s: two eager model builds and an Orbax round trip.
def test_checkpoint_weights_reach_both_models(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from perturb_jax import checkpoint, convert_weights

    source, pure, _ = benchmark.build_weights("embedded", seed=1)
    path = str(tmp_path / "ckpt")
    checkpoint.save_model(convert_weights.build_model(pure, 10, 8), path, num_classes=10, width_divisor=8)
    monkeypatch.setattr(benchmark.config, "EMBEDDED_CHECKPOINT", path)
    tmodel, loaded, weights = benchmark.build_weights("embedded", seed=0)
    assert weights.startswith("trained checkpoint")
    np.testing.assert_array_equal(loaded["fc"][0]["kernel"], pure["fc"][0]["kernel"])
    for k, v in source.state_dict().items():
        np.testing.assert_array_equal(tmodel.state_dict()[k].numpy(), v.numpy(), err_msg=k)
