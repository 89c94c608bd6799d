"""JAX's own multi-process runtime: when to call ``jax.distributed.initialize`` and how, for every job here.

``mode`` 'auto' initialises when the environment is a multi-process job JAX can detect (SLURM with more than one
task, a Cloud TPU pod slice) or when the config names a coordinator; 'on' always; 'off' never. On CPU the
cross-process collectives are gloo's. Must run before anything touches a JAX device. ``allgather_bytes``,
``collectively`` and ``on_lead`` are what the jobs' processes share once joined.
"""

import os
import shutil
import socket
import sys
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from eval.errors import ConfigError

_LOGGED = False  # log_backend says it once per process
_TPU_POD_VARIABLES = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID")


def _detected() -> str:
    """The name of the multi-process environment JAX's cluster detection will find, or ''."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
        return "SLURM"
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts or any(v in os.environ for v in _TPU_POD_VARIABLES[1:]):
        return "TPU pod"
    return ""


def _reachable(address: str, timeout: float) -> bool:
    """Whether a TCP connection to 'host:port' opens within ``timeout`` seconds (retrying every half second)."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def initialize(cfg) -> None:
    """Initialises the distributed runtime as ``cfg`` (a ``distributed`` ConfigDict) and the environment ask, then
    says which backend runs (``log_backend``).

    ``cfg`` fields: ``mode`` ('auto', 'on', 'off'), ``coordinator_address`` ('host:port'), ``num_processes``,
    ``process_id`` (-1: let JAX detect), ``initialization_timeout`` (seconds). A coordinator that cannot be reached
    in time is a one-line ``ConfigError`` naming the address.
    """
    _join(cfg)
    log_backend()


def log_backend() -> None:
    """Prints (process 0, once) the backend and devices JAX runs on; warns when a CUDA GPU is present but JAX runs
    on the CPU (a CPU-only jaxlib: ``pip install -U "jax[cuda12]"``)."""
    global _LOGGED
    if _LOGGED:
        return
    _LOGGED = True
    devices = jax.devices()
    if jax.process_index() == 0:
        kinds = sorted({d.device_kind for d in devices})
        print(f"JAX backend: {jax.default_backend()}, {len(devices)} device(s) ({', '.join(kinds)}), "
              f"{jax.process_count()} process(es)", file=sys.stderr, flush=True)
    if jax.default_backend() == "cpu" and shutil.which("nvidia-smi"):
        logging.warning("a CUDA GPU is present but JAX runs on the CPU: install a CUDA jaxlib with "
                        'pip install -U "jax[cuda12]" (README: "Installs for GPUs and TPUs")')


def _join(cfg) -> None:
    if cfg.mode == "off" or jax.distributed.is_initialized():
        return
    environment = _detected()
    if cfg.mode == "auto" and not environment and not cfg.coordinator_address:
        return
    if cfg.coordinator_address and (cfg.num_processes < 1 or cfg.process_id < 0):
        raise ConfigError("config.distributed.coordinator_address needs distributed.num_processes >= 1 and "
                          "distributed.process_id >= 0 (this process's number)")
    if cfg.process_id >= cfg.num_processes > 0:
        raise ConfigError(f"config.distributed.process_id: {cfg.process_id} is not below num_processes "
                          f"{cfg.num_processes}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only; GPUs and TPUs keep theirs.
    kwargs = {}
    if cfg.coordinator_address and cfg.process_id > 0 and not _reachable(cfg.coordinator_address,
                                                                         cfg.initialization_timeout):
        # JAX's client aborts the process when it cannot connect: say why in one line first.
        raise ConfigError(f"config.distributed.coordinator_address: nothing answers at {cfg.coordinator_address} "
                          f"after {cfg.initialization_timeout} s; start process 0 (the coordinator) with the same "
                          "address, or fix the address")
    if cfg.coordinator_address:
        kwargs = dict(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
                      process_id=cfg.process_id)
    try:
        jax.distributed.initialize(initialization_timeout=int(cfg.initialization_timeout), **kwargs)
    except Exception as e:  # noqa: BLE001 - the runtime raises several types; each becomes one line.
        where = cfg.coordinator_address or environment or "the detected cluster"
        raise ConfigError(f"config.distributed.coordinator_address: cannot join the job at {where} within "
                          f"{cfg.initialization_timeout} s ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          "check that every process was started with the same address") from e
    logging.info("distributed: process %d of %d, %d local of %d devices (%s)", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(), environment or "config")


def allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's ``data``, in process order (``process_allgather`` of a padded uint8 array)."""
    lengths = np.asarray(multihost_utils.process_allgather(np.array(len(data), np.int32))).reshape(-1)
    padded = np.zeros(max(int(lengths.max()), 1), np.uint8)
    padded[:len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [row[:n].tobytes() for row, n in zip(rows, lengths)]


def collectively(fn, lead_first: bool = False):
    """``fn()`` on every process (on process 0 before the others when ``lead_first``); returns its result.

    When it raises on one process it raises on all: that process re-raises its own error, the others a one-line
    ``ConfigError`` quoting it, so that no process is left waiting at a collective. One process: just ``fn()``.
    """
    if jax.process_count() == 1:
        return fn()
    lead = jax.process_index() == 0
    result = None
    for turn in ((True, False) if lead_first else (lead,)):  # whether process 0 (True) or the others run now
        error = None
        if turn == lead:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - the other processes must hear of any error.
                error = e
        _agree(error)
    return result


def on_lead(fn):
    """``fn()`` on process 0 only (None elsewhere); an error there stops every process, as in ``collectively``."""
    return collectively(lambda: fn() if jax.process_index() == 0 else None)


def _agree(error: Exception | None) -> None:
    """Raises on every process when ``error`` is set on any (a collective: every process must call it)."""
    messages = allgather_bytes(f"{type(error).__name__}: {error}".encode() if error is not None else b"")
    failed = [(p, m.decode()) for p, m in enumerate(messages) if m]
    if error is not None:
        raise error
    if failed:
        process, message = failed[0]
        raise ConfigError(f"process {process} of the job stopped ({' '.join(message.split())[:300]})")
