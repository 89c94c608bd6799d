"""The main job as one job of two processes (2 CPU devices each, gloo on 127.0.0.1): the numbers of one process,
a killed pair that resumes to the same numbers, a workdir the processes do not share, a batch that does not split."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from flax import nnx

from perturb_jax.runtime import checkpoint
from perturb_jax.explain import config as config_lib
from perturb_jax.runtime.vgg import VGG19BN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(base, workdir, devices, process=None, address=""):
    """``python -m perturb_jax.main`` on the tiny config (test_main's: a random narrow classifier, private data)."""
    args = [sys.executable, "-m", "perturb_jax.main", "--config=configs/guided.py:tiny", f"--workdir={workdir}",
            f"--config.model.checkpoint={base / 'model'}", f"--config.data.data_dir={base / 'tfds'}"]
    if process is not None:
        args += [f"--config.distributed.coordinator_address={address}", "--config.distributed.num_processes=2",
                 f"--config.distributed.process_id={process}", "--config.distributed.initialization_timeout=60"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _pair(base, workdir, workdirs=None):
    address = f"127.0.0.1:{_free_port()}"
    return [_start(base, (workdirs or (workdir, workdir))[i], 2, i, address) for i in range(2)]


def _finish(procs, timeout=300):
    """Waits for every process, then reports each one that failed."""
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    failed = [f"process {i}:\n{out[-2000:]}" for i, (p, out) in enumerate(zip(procs, outs)) if p.returncode]
    assert not failed, "\n".join(failed)


def _results(workdir):
    """results.json without the seconds per image (each run's own)."""
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert set(results["summary"].pop("seconds_per_image")) == {"perceptual_ball_guided", "gradient"}
    return results


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The tiny job in one process with 4 devices (the two processes' 2 x 2, one image per device): its results."""
    base = tmp_path_factory.mktemp("tiny")
    checkpoint.save_model(VGG19BN(10, 8, rngs=nnx.Rngs(0)), str(base / "model"), num_classes=10, width_divisor=8)
    _finish([_start(base, base / "one", 4)])  # generates the tiny data first, so that the pairs only read it
    return base, _results(base / "one")


@pytest.fixture(scope="module")
def two_processes(one_process):
    """The same job as a pair of processes (2 devices each): its workdir and results."""
    base, _ = one_process
    work = base / "two"
    _finish(_pair(base, work))
    return work, _results(work)


# Fields of a perceptual-ball record that its L-BFGS iterations make (the rest, and every gradient record, depend on
# one pass of the network).
ITERATED = {"loss", "margin_adv", "steps", "value_box", "value_iou", "value_correct", "mean_box", "mean_iou",
            "mean_correct", "energy_box", "energy_iou", "energy_correct"}


def test_two_processes_give_the_numbers_of_one(one_process, two_processes):
    """The same rows, and every record of the single-pass method equal exactly. The perceptual ball's clean margins
    agree to float32 rounding only: one process of 4 devices and two of 2 compile their per-device programs apart,
    and on some CPUs they round differently (measured on one: 3.2201898e-4 against 3.2201852e-4; equal on
    another), which the tiny random classifier's L-BFGS (margins of 1e-4) carries into its steps and boxes, so its
    iterated fields are not compared here; the killed pair below is held to exact equality with the pair."""
    _, expected = one_process
    work, results = two_processes
    assert len(results["per_image"]) == len(expected["per_image"]) == 32
    for got, want in zip(results["per_image"], expected["per_image"]):
        if got["method"] == "gradient":
            assert got == want
        else:
            assert {k: v for k, v in got.items() if k not in ITERATED | {"margin"}} == \
                {k: v for k, v in want.items() if k not in ITERATED | {"margin"}}
            assert got["margin"] == pytest.approx(want["margin"], rel=1e-4)
    for key in ("num_images", "failed_images", "skipped_images", "classifier_accuracy"):
        assert results["summary"][key] == expected["summary"][key]
    assert results["summary"]["max_box_acc"]["gradient"] == expected["summary"]["max_box_acc"]["gradient"]
    assert results["summary"]["localisation_error"]["gradient"] == \
        expected["summary"]["localisation_error"]["gradient"]
    batches = ["eval_00000.npz", "eval_00001.npz", "eval_00002.npz", "tune_00000.npz", "tune_00001.npz"]
    assert sorted(os.listdir(work / "maps")) == batches[:3] + ["gradient", "perceptual_ball"] + batches[3:]
    assert sorted(os.listdir(work / "maps" / "perceptual_ball")) == batches[:3] + ["options.json"] + batches[3:]
    assert not [name for name in os.listdir(work) if name.startswith(".")]


@pytest.mark.slow  # about 100 s idle (2026-12-07): the second CI step
def test_killed_pair_resumes_to_the_same_numbers(one_process, two_processes):
    base, _ = one_process
    _, expected = two_processes
    work = base / "cut"
    procs = _pair(base, work)
    deadline = time.time() + 240
    while not os.path.exists(work / "maps" / "tune_00000.npz") and time.time() < deadline:
        assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)  # the other is left in a collective: it fails or hangs, and is killed too
    try:
        procs[0].wait(timeout=5)
    except subprocess.TimeoutExpired:
        procs[0].send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate()
    done = [name for name in os.listdir(work / "maps") if name.endswith(".npz") and not name.startswith(".")]
    assert "tune_00000.npz" in done and len(done) < 5 and not os.path.exists(work / "results.json")
    _finish(_pair(base, work))
    assert _results(work) == expected


def test_workdir_not_shared_fails_on_both_before_the_work(one_process, tmp_path):
    base, _ = one_process
    procs = _pair(base, None, (tmp_path / "p0", tmp_path / "p1"))
    outs = [p.communicate(timeout=300)[0].strip().splitlines() for p in procs]
    assert all(p.returncode == 1 for p in procs), outs
    assert outs[1][-1] == (f"error: --workdir {tmp_path / 'p1'} is not shared: process 1 does not see the file "
                           "process 0 wrote there; give a directory every process can read (e.g. on a network file "
                           "system)")
    assert outs[0][-1].startswith("error: process 1 of the job stopped (ConfigError: --workdir")
    assert not list((tmp_path / "p0" / "maps").rglob("*.npz"))


@pytest.mark.parametrize("devices,processes,message", [
    (4, 3, "config.batch_size: 4 does not divide over the 4 devices in 3 processes; use a multiple of 12"),
    (8, 2, "config.batch_size: 4 does not divide over the 8 devices in 2 processes; use a multiple of 8"),
])
def test_batch_that_does_not_split_over_processes_is_refused(devices, processes, message):
    c = config_lib.get_config("tiny")
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(c, num_devices=devices, num_processes=processes)
    assert str(e.value) == message
