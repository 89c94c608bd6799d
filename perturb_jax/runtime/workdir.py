"""A job's working directory: proved writable (and shared by every process) before the work, and bound to the config
of the run it holds.

Shared by every job here (the explainer, the ALN trainer), so that a resumed run is refused when its
results-relevant fields differ from the stored run's.
"""

import json
import os

import ml_collections

from eval.errors import ConfigError

_SHARED = ".process_0_token"  # check_shared's proof that every process sees the same workdir


def prepare(workdir: str, subdir: str = "") -> None:
    """Creates ``workdir`` (and ``workdir/subdir``) and proves it writable now, not after the work."""
    try:
        os.makedirs(os.path.join(workdir, subdir), exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir} cannot be written ({e.strerror}); choose another") from e


def check_shared(workdir: str, token: str, process: int) -> None:
    """Process 0 leaves ``token`` in ``workdir``; every other process must read it there (one shared directory)."""
    path = os.path.join(workdir, _SHARED)
    if process == 0:
        _write_atomically(path, token)
        return
    try:
        with open(path) as f:
            seen = f.read()
    except OSError:
        seen = ""
    if seen != token:
        raise ConfigError(f"--workdir {workdir} is not shared: process {process} does not see the file process 0 "
                          "wrote there; give a directory every process can read (e.g. on a network file system)")


def remove_shared(workdir: str) -> None:
    """Removes what ``check_shared`` left, once every process has read it."""
    os.remove(os.path.join(workdir, _SHARED))


def fingerprint(config: ml_collections.ConfigDict, ignore=()) -> dict:
    """The config as a dict without the dotted keys in ``ignore`` (fields that change no stored number)."""
    fields = json.loads(config.to_json_best_effort())
    for key in ignore:
        parent = fields
        *path, leaf = key.split(".")
        for part in path:
            parent = parent.get(part, {})
        parent.pop(leaf, None)
    return fields


def check_fingerprint(config: ml_collections.ConfigDict, workdir: str, ignore=(), write: bool = True) -> None:
    """Stores the config in ``workdir/config.json`` (when ``write``); a resumed run must match the stored one.
    ``run_config.json`` holds the latest run's whole config, ``ignore``d fields included (``eval.collect`` reads it)."""
    fields = fingerprint(config, ignore)
    if write:
        _write_atomically(os.path.join(workdir, "run_config.json"), json.dumps(fingerprint(config), indent=2,
                                                                                sort_keys=True))
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored != fields:
            diff = sorted(_diff_keys(stored, fields))
            raise ConfigError(f"--workdir {workdir} holds a run with another config (differs in "
                              f"{', '.join(diff)}); use a new --workdir or the same config")
    elif write:  # atomically: another process of the job may be reading it
        _write_atomically(path, json.dumps(fields, indent=2, sort_keys=True))


def check_options(directory: str, field: str, options: dict, write: bool = True) -> None:
    """A method's options in ``directory/options.json``: its stored maps were made with them, a resumed run must
    use the same (``field`` names the config group in the error)."""
    path = os.path.join(directory, "options.json")
    current = json.loads(json.dumps(options))
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        if stored != current:
            diff = ", ".join(f"{field}.{k}" for k in sorted(_diff_keys(stored, current)))
            raise ConfigError(f"--workdir {os.path.dirname(os.path.dirname(directory))} holds maps of another "
                              f"setting ({diff}); use a new --workdir, the same setting, or delete {directory}")
    elif write:
        os.makedirs(directory, exist_ok=True)
        _write_atomically(path, json.dumps(current, indent=2, sort_keys=True))


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _diff_keys(a, b, prefix=""):
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            yield from _diff_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            yield prefix + key
