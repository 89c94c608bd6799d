"""Config checks and groups that every job shares: the ``distributed`` group, a global batch over the devices,
disjoint tuning and evaluation splits, a choice; each raises a one-line ``ConfigError`` naming the field."""

import math
import re

import ml_collections

from eval.errors import ConfigError

DISTRIBUTED = ("auto", "on", "off")


def fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def choice(field: str, value, choices) -> None:
    if value not in choices:
        fail(field, f"must be one of {choices}, got {value!r}")


def distributed_config() -> ml_collections.ConfigDict:
    """The ``distributed`` group of every job here: how ``perturb_jax.runtime.distributed.initialize`` joins a job."""
    d = ml_collections.ConfigDict()
    d.mode = "auto"  # auto: initialise when SLURM, a TPU pod or the fields below ask for it.
    d.coordinator_address = ""  # e.g. 127.0.0.1:12345 (with num_processes and process_id).
    d.num_processes = 0
    d.process_id = -1
    d.initialization_timeout = 120  # seconds to reach the coordinator.
    return d


def check_distributed(d: ml_collections.ConfigDict) -> None:
    """Checks the ``distributed`` group (``distributed_config``); the coordinator fields are checked on joining."""
    choice("distributed.mode", d.mode, DISTRIBUTED)
    if not d.initialization_timeout > 0:
        fail("distributed.initialization_timeout", f"must be > 0 seconds, got {d.initialization_timeout}")


def check_batch_size(batch_size: int, num_devices: int, num_processes: int, field: str = "batch_size") -> None:
    """A global batch must split evenly over the processes and over the devices."""
    if batch_size < 1 or batch_size % num_devices or batch_size % num_processes:
        where = f" in {num_processes} processes" if num_processes > 1 else ""
        multiple = math.lcm(num_devices, num_processes)
        fail(field, f"{batch_size} does not divide over the {num_devices} devices{where}; "
              f"use a multiple of {multiple}")


def _slice(split: str) -> tuple[str, int | None, int | None] | None:
    """'validation[1000:1512]' -> ('validation', 1000, 1512); None for what is not a plain integer slice."""
    m = re.fullmatch(r"(\w+)(?:\[(-?\d*):(-?\d*)\])?", split.strip())
    if not m:
        return None
    start, stop = (int(v) if v else None for v in m.group(2, 3))
    if (start or 0) < 0 or (stop or 0) < 0:
        return None
    return m.group(1), start, stop


def check_disjoint(tune: str, evaluation: str) -> None:
    """The tuning images must not be the evaluation images (checked where both are integer slices of one split)."""
    a, b = _slice(tune) if tune else None, _slice(evaluation)
    if not a or not b or a[0] != b[0]:
        return
    lo, hi = max(a[1] or 0, b[1] or 0), min(a[2] or 1 << 62, b[2] or 1 << 62)
    if lo < hi:
        fail("data.tune_split", f"{tune!r} overlaps data.eval_split {evaluation!r}: thresholds would be tuned on "
              "the images they are reported on; choose disjoint slices")
