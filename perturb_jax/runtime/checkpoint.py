"""Orbax checkpoints of the classifier: ``DIR/model.json`` (architecture) and ``DIR/state`` (params, BN statistics)."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from perturb_jax.runtime.vgg import VGG19BN

# The classifier shipped for the embedded benchmark, and the command that made it.
EMBEDDED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                        "clutter_shapes_vgg19bn_w8")
TRAIN_EMBEDDED = "python -m perturb_jax.train_classifier --config=configs/classifier.py --workdir=/tmp/classifier"

class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or of another architecture."""


def model_state(model: nnx.Module) -> dict:
    """The saved part of a model: parameters and batch-norm statistics as a plain nested dict."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))


def save_model(model: VGG19BN, directory: str, *, num_classes: int, width_divisor: int, provenance: str = ""):
    """Writes ``model`` to ``directory`` (created; must not hold a checkpoint already)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    state = jax.tree.map(np.asarray, model_state(model))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(directory, "state"), state, force=True)
    meta = {"architecture": "vgg19_bn", "num_classes": num_classes, "width_divisor": width_divisor,
            "provenance": provenance}
    with open(os.path.join(directory, "model.json"), "w") as f:
        json.dump(meta, f, indent=2)


def load_model(directory: str, how_to_make: str = "") -> VGG19BN:
    """Restores a ``VGG19BN`` from ``directory``; a missing or unreadable checkpoint raises ``CheckpointError``."""
    directory = os.path.abspath(directory)
    hint = f"; make it with: {how_to_make}" if how_to_make else ""
    meta_path = os.path.join(directory, "model.json")
    if not os.path.isfile(meta_path) or not os.path.isdir(os.path.join(directory, "state")):
        raise CheckpointError(f"checkpoint {directory}: expected {meta_path} and {directory}/state{hint}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        abstract = nnx.eval_shape(lambda: VGG19BN(meta["num_classes"], meta["width_divisor"], rngs=nnx.Rngs(0)))
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model_state(abstract))
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(os.path.join(directory, "state"), target)
    except Exception as e:  # noqa: BLE001 - any failure to read is reported with the path and the fix.
        raise CheckpointError(f"checkpoint {directory} is corrupt or incompatible ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}){hint}") from e
    # Filled from the abstract model: building a real one would run (and compile) every random initialiser.
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, restored))
    return nnx.merge(graphdef, state)
