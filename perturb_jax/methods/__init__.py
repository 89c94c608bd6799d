"""The explanation methods of the perceptual-ball paper's Table 1 (and Figure 4), one module each, under one
signature (``common.Method``): ``explain(model, images, targets, key, options) -> {"saliency": (B, H, W), ...}``.

``NAMES`` are the names the config uses (``--config.methods=gradient,rise``); ``get(name)`` imports the method's
module; ``make_fn`` compiles it with the weights as an argument.
"""

import importlib

import jax
from flax import nnx

from perturb_jax.methods import common

# name -> module: the perceptual ball, the nine other methods of Table 1, and the gradient and occlusion.
_MODULES = {
    "perceptual_ball": "perceptual_ball.method",
    "gradient": "gradient",
    "guided_backprop": "guided_backprop",
    "grad_cam": "grad_cam",
    "guided_grad_cam": "guided_grad_cam",
    "smoothgrad": "smoothgrad",
    "integrated_gradients": "integrated_gradients",
    "excitation_backprop": "excitation_backprop",
    "extremal_perturbation": "extremal_perturbation",
    "rise": "rise",
    "deepfool": "deepfool",
    "occlusion": "occlusion",
}
NAMES = tuple(_MODULES)


def get(name: str) -> common.Method:
    if name not in _MODULES:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"perturb_jax.methods.{_MODULES[name]}").METHOD


def make_fn(name: str, graphdef: nnx.GraphDef, options: dict):
    """``jit(fn)(state, images, targets, key) -> {"saliency": (B, H, W), ...}`` for the method ``name`` with
    ``options`` (static); the weights are an argument, never a constant of the program."""
    method = get(name)

    def fn(state, images, targets, key):
        return method.explain(nnx.merge(graphdef, state), images, targets, key, options)

    return jax.jit(fn)


def defaults_table(names=NAMES) -> str:
    """The table of the options of ``names``: default and source (``tests/test_readme.py`` keeps the README's and
    docs/methods.md's copies equal to this)."""
    lines = ["| method | option | default | source |", "|---|---|---|---|"]
    for name in names:
        method = get(name)
        if not method.options:
            lines.append(f"| `{name}` | - | - | {method.citation} |")
        for key, option in method.options.items():
            lines.append(f"| `{name}` | `{key}` | `{option.default}` | {option.source} |")
    return "\n".join(lines)
