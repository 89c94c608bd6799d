"""The ALN's training job: data parallel over 4 devices as over 1, two processes on 127.0.0.1, a kill and a resume
that repeat the uninterrupted trajectory, a corrupt checkpoint, a non-finite loss, bad configs, and one full train
and evaluate cycle on the tiny data."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from aln_jax import config as config_lib, train
from eval.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "aln_worker.py")


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args, devices=1, **kw):
    return subprocess.Popen([sys.executable, WORKER, *args], env=_env(devices), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _finish_all(procs, timeout=300):
    """Waits for every process, then reports each one that failed (the first to fail is often not the cause)."""
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    failed = [f"process {i}:\n{out[-2000:]}" for i, (p, out) in enumerate(zip(procs, outs)) if p.returncode]
    assert not failed, "\n".join(failed)


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _assert_same_state(a, b, rtol=0.0, atol=0.0):
    keys = sorted(k for k in a if k.startswith("["))
    assert keys and keys == sorted(k for k in b if k.startswith("["))
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.slow  # 48 s idle (2026-12-07): the second CI step
def test_four_devices_give_the_parameters_of_one(tmp_path):
    one, four = _run(["steps", str(tmp_path / "one.npz")], 1), _run(["steps", str(tmp_path / "four.npz")], 4)
    _finish(one), _finish(four)
    a, b = _load(tmp_path / "one.npz"), _load(tmp_path / "four.npz")
    assert int(a["devices"]) == 1 and int(b["devices"]) == 4
    np.testing.assert_allclose(a["metrics"], b["metrics"], rtol=1e-4, atol=1e-5)  # losses, accuracies, grad norm
    # Adam divides each gradient by its own running scale, so a parameter whose gradient is near zero moves by a
    # step of ~lr whatever its sign: float differences in the reduction order show at a fraction of lr (1e-2).
    _assert_same_state(a, b, rtol=1e-4, atol=5e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_hold_identical_parameters(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    work = str(tmp_path / "work")
    procs = [_run(["train", work, str(tmp_path / f"p{i}.npz"), address, "2", str(i)], devices=2) for i in range(2)]
    _finish_all(procs)
    a, b = _load(tmp_path / "p0.npz"), _load(tmp_path / "p1.npz")
    assert int(a["processes"]) == 2 and int(a["devices"]) == 4
    _assert_same_state(a, b)
    assert int(a["['step']"]) == config_lib.get_config("paper,tiny").num_steps
    assert os.path.isdir(os.path.join(work, "checkpoints", str(int(a["['step']"]))))


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow  # 86 s idle (2026-12-07): the second CI step
def test_killed_run_resumes_on_the_uninterrupted_trajectory(tmp_path):
    sets = ["num_steps=40", "checkpoint_every=8", "log_every=4"]
    whole = str(tmp_path / "whole")
    _finish(_run(["train", whole, str(tmp_path / "whole.npz"), *sets]))
    cut = str(tmp_path / "cut")
    proc = _run(["train", cut, str(tmp_path / "cut.npz"), *sets])
    deadline = time.time() + 240
    while not os.path.isdir(os.path.join(cut, "checkpoints", "16")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(tmp_path / "cut.npz")  # it was stopped during training
    out = _finish(_run(["train", cut, str(tmp_path / "cut.npz"), *sets]))
    assert "resumed from step" in out
    _assert_same_state(_load(tmp_path / "whole.npz"), _load(tmp_path / "cut.npz"), rtol=1e-6, atol=1e-7)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "images_per_second"} for r in rs]  # noqa: E731
    assert [r["step"] for r in _records(cut)] == list(range(4, 41, 4))
    for r, s in zip(strip(_records(whole)), strip(_records(cut))):
        assert r == pytest.approx(s, rel=1e-6)


@pytest.mark.slow  # 55 s idle (2026-12-07): the second CI step
def test_corrupt_latest_checkpoint_falls_back_and_says_so(tmp_path):
    work = str(tmp_path / "w")
    _finish(_run(["train", work, str(tmp_path / "a.npz")]))  # tiny: 6 steps, checkpoints 3 and 6
    for root, _, files in os.walk(os.path.join(work, "checkpoints", "6")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    out = _finish(_run(["train", work, str(tmp_path / "b.npz"), "num_steps=9"]))
    assert "checkpoint 6" in out and "previous" in out and "resumed from step 3" in out
    assert int(_load(tmp_path / "b.npz")["['step']"]) == 9


@pytest.mark.slow  # 27 s idle (2026-12-07): the second CI step
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    work = str(tmp_path / "w")  # tiny: 2 classifier pre-training steps (no occlusion), then the first occlusion
    # fills with 3e38 (finite, so the config accepts it), which overflows the classifier's first layer to inf
    proc = _run(["train", work, str(tmp_path / "b.npz"), "aln.fill_value=3e38", "checkpoint_every=1"])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "non-finite loss at step 3" in out and "last good checkpoint is step 2" in out
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["1", "2"]


def test_bad_configs_fail_in_one_line():
    def fails(field, **kw):
        c = config_lib.get_config("paper,tiny")
        for k, v in kw.items():
            group, leaf = k.split("__") if "__" in k else ("", k)
            (c[group] if group else c)[leaf] = v
        with pytest.raises(ConfigError, match=field):
            config_lib.validate(c, jax.device_count(), 1)

    fails("batch_size", batch_size=7 if jax.device_count() == 2 else 0)
    fails("train.target_accuracy", train__target_accuracy=1.0)
    fails("train.target_accuracy", train__target_accuracy=0.0)
    fails("train.lambda_reg", train__lambda_reg=-1.0)
    fails("aln.image_size", aln__image_size=30)
    fails("slic.n_segments", slic__n_segments=300)
    fails("data.tune_split", data__tune_split="validation[:10]")
    fails("aln.classifier", aln__classifier="/no/such/checkpoint")
    c = config_lib.get_config("paper,tiny")
    with pytest.raises(ConfigError, match="batch_size"):
        config_lib.validate(c, 3, 1)
    with pytest.raises(ConfigError, match="batch_size"):
        config_lib.validate(c, 1, 3)


def test_classifier_checkpoint_of_other_classes_is_refused():
    c = config_lib.get_config("imagenet")
    from perturb_jax.runtime.checkpoint import EMBEDDED as EMBEDDED_CHECKPOINT  # noqa: PLC0415
    c.aln.classifier = EMBEDDED_CHECKPOINT
    with pytest.raises(ConfigError, match="aln.classifier: .* has 10 classes, imagenet2012 has 1000"):
        train.build_models(c, 1000)


@pytest.mark.slow  # 35 s idle (2026-12-07): the second CI step
def test_checkpoint_of_other_shapes_is_refused(tmp_path):
    work = str(tmp_path / "w")
    _finish(_run(["train", work, str(tmp_path / "a.npz"), "num_steps=3"]))
    c = config_lib.get_config("paper,tiny")
    c.aln.bottleneck = 24
    os.remove(os.path.join(work, "config.json"))  # past the fingerprint: the shapes must still be checked
    with pytest.raises(ConfigError, match="does not fit the config"):
        train.train(c, work)


def test_full_train_and_evaluate_cycle_on_tiny_data(tmp_path):
    work = str(tmp_path / "aln")
    proc = subprocess.run([sys.executable, "-m", "aln_jax.main", "--config=configs/aln.py:paper,tiny", f"--workdir={work}"],
                          env=_env(1), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("metrics.jsonl", "learning_curves.png", "config.json", "eval/table.md", "eval/results.json",
                 "eval/figure.png"):
        assert os.path.exists(os.path.join(work, name)), name
    assert os.listdir(os.path.join(work, "tensorboard"))
    assert [r["step"] for r in _records(work)] == [2, 4, 6]
    with open(os.path.join(work, "eval", "results.json")) as f:
        summary = json.load(f)["summary"]
    assert summary["num_images"]["eval"] == 16
    png = str(tmp_path / "ablation.png")
    ablation = subprocess.run([sys.executable, "-m", "aln_jax.experiments.ablation", "--config=configs/aln.py:paper,tiny",
                               f"--workdirs={work},{work}", f"--out={png}", "--num_images=3"], env=_env(1), cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
    assert ablation.returncode == 0, ablation.stderr[-3000:]
    assert ablation.stdout.count("(step 6): occluded area") == 2 and os.path.getsize(png) > 0
    shutil.rmtree(os.path.join(work, "eval"))
    again = subprocess.run([sys.executable, "-m", "aln_jax.main", "--config=configs/aln.py:paper,tiny",
                            f"--workdir={work}", "--config.aln.bottleneck=8"], env=_env(1), cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    last = again.stderr.strip().splitlines()[-1]
    assert again.returncode != 0 and last.startswith("error: --workdir") and "another config" in last


def test_distributed_config_errors_are_one_line():
    from perturb_jax.runtime import distributed  # noqa: PLC0415

    c = config_lib.get_config("paper,tiny").distributed
    c.coordinator_address = "127.0.0.1:1"
    with pytest.raises(ConfigError, match="num_processes >= 1 and distributed.process_id >= 0"):
        distributed.initialize(c)
    c.num_processes, c.process_id = 2, 2
    with pytest.raises(ConfigError, match="process_id: 2 is not below num_processes 2"):
        distributed.initialize(c)


def test_unreachable_coordinator_fails_within_the_timeout(tmp_path):
    code = ("import sys; from aln_jax import config; from perturb_jax.runtime import distributed\n"
            "c = config.get_config('paper,tiny').distributed\n"
            "c.coordinator_address, c.num_processes, c.process_id = '127.0.0.1:%d', 2, 1\n"
            "c.initialization_timeout = 5\n"
            "try:\n    distributed.initialize(c)\nexcept Exception as e:\n    print('ERR', e); sys.exit(3)\n"
            % _free_port())
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", code], env=_env(1), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-2000:]
    assert "ERR config.distributed.coordinator_address: nothing answers at 127.0.0.1:" in proc.stdout
    assert time.time() - start < 60
