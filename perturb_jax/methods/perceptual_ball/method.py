"""Perturbations on the perceptual ball (Law, Elliott, Russell 2020, Eq. 4): ``perturb.explain_batch`` under the
methods' signature. Its options are the config's ``perturb`` and ``saliency`` groups (``perturb.Settings``), given
here as ``options["settings"]``; the target classes are the runner's."""

import dataclasses

from flax import nnx

from perturb_jax.methods.perceptual_ball import perturb
from perturb_jax.methods import common

DIAGNOSTICS = ("margin", "margin_adv", "loss", "steps", "failed")


def explain(model, images, targets, key, options):
    del key
    settings = dataclasses.replace(options["settings"], target="ground_truth")  # explain exactly ``targets``
    graphdef, state = nnx.split(model)
    out = perturb.explain_batch(graphdef, state, images, targets, settings)
    return {"saliency": out["saliency"]} | {k: out[k] for k in DIAGNOSTICS}


METHOD = common.Method("perceptual_ball", explain, {}, "Law, Elliott, Russell 2020; the authors' PyTorch code")
