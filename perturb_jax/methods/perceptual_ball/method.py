"""Perturbations on the perceptual ball (Law, Elliott, Russell 2020, Eq. 4) under the methods' signature: each image
optimised on its perceptual ball (``perturb.explain_batch``), the map the perturbation's per-pixel norm (Sec. 3)."""

import numpy as np
from flax import nnx

from perturb_jax.methods import common
from perturb_jax.methods.perceptual_ball import objective, optimize, perturb
from perturb_jax.runtime.vgg import NUM_RELUS

DIAGNOSTICS = ("margin", "margin_adv", "loss", "steps", "failed")

OPTIONS = {
    "relu_layers": common.Option(tuple(range(2, 14)), "paper Sec. 3 (guided: ReLUs 2-13; unguided 5-10)",
                                 minimum=1, maximum=NUM_RELUS),
    "lam_perceptual": common.Option(1e4, "paper Sec. 3 and the authors' code (gamma)", minimum=0.0),
    "lam_pixel": common.Option(1.0, "paper Sec. 3 and the authors' code", minimum=0.0),
    "target_margin": common.Option(-2.0, "the authors' code; the paper's 'T > 0' is a typo (objective.py)"),
    "reduction": common.Option("mean", "the authors' code (MSE); 'sum' is the paper's squared norm",
                               choices=objective.REDUCTIONS),
    "optimizer": common.Option("lbfgs", "the authors' code: torch L-BFGS, no line search",
                               choices=optimize.OPTIMIZERS),
    "max_steps": common.Option(100, "the authors' example (their function's default: 200); embedded variant: 30",
                               minimum=1),
    "learning_rate": common.Option(1.0, "the authors' code", minimum=0.0),
    "history_size": common.Option(100, "the authors' code", minimum=1),
    "tolerance_grad": common.Option(1e-7, "torch L-BFGS default", minimum=0.0),
    "tolerance_change": common.Option(1e-9, "torch L-BFGS default", minimum=0.0),
    "guided": common.Option(True, "paper Sec. 3: the map times the normalised input gradient"),
    "smoothing_sigma": common.Option(2.0, "the authors' code (Gaussian smoothing of the map)", minimum=0.0),
}


def explain(model, images, targets, key, options):
    del key
    settings = perturb.Settings.from_options(options, target="ground_truth")  # explain exactly ``targets``
    graphdef, state = nnx.split(model)
    out = perturb.explain_batch(graphdef, state, images, targets, settings)
    return {"saliency": out["saliency"]} | {k: out[k] for k in DIAGNOSTICS}


def label(options: dict) -> str:
    return "perceptual_ball_" + ("guided" if options["guided"] else "unguided")


def summarise(diagnostics: dict) -> dict:
    """The share of images whose perturbation flipped the class (margin after <= 0) and the mean L-BFGS steps;
    nothing without those diagnostics."""
    if not {"margin_adv", "steps"} <= diagnostics.keys():
        return {}
    return {"adversarial_success": float(np.mean(diagnostics["margin_adv"] <= 0)),
            "mean_steps": float(np.mean(diagnostics["steps"]))}


METHOD = common.Method("perceptual_ball", explain, OPTIONS, "Law, Elliott, Russell 2020; the authors' PyTorch code",
                       label=label, summarise=summarise)
