"""The packages' layers: eval and the runtime, then the methods, then the jobs, then the tools; no module imports
one above it, the ALN imports nothing of the explain job, and there is no import cycle (imports inside functions
included)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("perturb_jax", "aln_jax", "eval", "benchmarks")
# The first prefix that matches a module gives its layer.
LAYERS = (("aln_jax.experiments", 3), ("benchmarks", 3), ("eval", 0), ("perturb_jax.runtime", 0),
          ("perturb_jax.methods", 1), ("perturb_jax.explain", 2), ("perturb_jax.main", 2),
          ("perturb_jax.train_classifier", 2), ("aln_jax", 2), ("perturb_jax", 0))


def _layer(module: str) -> int:
    return next(level for prefix, level in LAYERS if module == prefix or module.startswith(prefix + "."))


def _modules() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, ".")
                    found[rel.removesuffix(".__init__")] = os.path.join(folder, name)
    return found


def _imports(path: str, modules: dict) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _graph():
    modules = _modules()
    return {m: _imports(p, modules) for m, p in modules.items()}


def test_no_module_imports_one_above_it():
    wrong = [(m, i) for m, imported in _graph().items() for i in imported if _layer(i) > _layer(m)]
    assert not wrong, wrong


def test_the_aln_imports_nothing_of_the_explain_job():
    wrong = [(m, i) for m, imported in _graph().items() if m.startswith("aln_jax") for i in imported
             if i.startswith(("perturb_jax.explain", "perturb_jax.main"))]
    assert not wrong, wrong


def test_no_import_cycle():
    graph = _graph()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in graph.get(m, ()):
            if n in graph:  # an imported package's __init__ counts as the package
                assert state.get(n) != "open", " -> ".join(path + [n])
                if n not in state:
                    visit(n, path + [n])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_a_wrong_import():
    """An import from a lower layer to a higher one is caught (the rule above can fail)."""
    assert _layer("eval.boxes") < _layer("perturb_jax.methods.grad_cam") < _layer("perturb_jax.explain.job") < \
        _layer("benchmarks.explainer_vs_torch")
    assert "perturb_jax.runtime.vgg" in _graph()["perturb_jax.methods.common"]
