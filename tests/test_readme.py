"""The README's tables that code can write stay equal to the code, and its test command is what CI runs."""

import os
import re

from perturb_jax import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_method_defaults_table_is_the_registry():
    assert methods.defaults_table() in _readme()


def test_ci_installs_what_the_readme_says():
    """Every ``pip install`` of the README's test command is in .ci/run, in the same order."""
    command = next(line for line in _readme().splitlines() if "pytest" in line and line.startswith("python3 -m venv"))
    installs = [part.strip() for part in command.split("&&") if part.strip().startswith("pip install")]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [re.sub(r"\s-q\b", "", line.strip()) for line in f if line.startswith("pip install") and
              "--upgrade pip" not in line]
    assert installs == ci and len(installs) == 3


def test_aln_departures_table_is_the_config():
    """Every field where the ALN's default differs from ``:paper`` has a reason, and the README shows the table."""
    from aln_jax import config  # noqa: PLC0415

    assert set(config.departures()) == set(config.DEPARTURES)
    assert config.departures_table() in _readme()
