"""The README's tables that code can write stay equal to the code, and its test command is what CI runs."""

import os
import re

from perturb_jax import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme(path: str = "README.md") -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_method_defaults_tables_are_the_registry():
    """The README shows the perceptual ball's options, docs/methods.md every method's."""
    assert methods.defaults_table(("perceptual_ball",)) in _readme()
    assert methods.defaults_table() in _readme("docs/methods.md")


def test_readme_is_a_newcomers_page():
    """About 300 lines at most (reference material lives in docs/), and every page it links exists."""
    text = _readme()
    assert len(text.splitlines()) <= 300
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.(?:md|sh|png))\)", text):
        assert os.path.isfile(os.path.join(ROOT, link)), link


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
