"""Jitted prediction for evaluation: the ALN's occlusion map and class, and the stronger classifier's (Metric 2).

Weights are arguments of the jitted functions (never closed over); each returned function takes uint8 images at the
evaluation size and returns numpy arrays, as ``aln_jax.evaluate`` expects.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from perturb_jax import checkpoint, saliency
from aln_jax import step as step_lib


def make_predict_fn(config, corruption_def: nnx.GraphDef, classifier_def: nnx.GraphDef, params: dict):
    """``predict_fn(images) -> {prob, logits, masked}`` of the trained ALN (``params``: the state's two networks).

    ``prob`` is the corruption network's per-pixel occlusion probability at the ALN's input size (the map the
    paper's Sec. 3.2 thresholds); ``masked`` shows the image with the pixels of probability >= 0.5 occluded.
    """
    s = step_lib.Settings.from_config(config)
    size = config.aln.image_size
    fill = np.round((np.asarray(s.mean) + s.fill_value * np.asarray(s.std)) * 255)

    @jax.jit
    def predict(params, images):
        if images.shape[1:3] != (size, size):
            images = jax.image.resize(images.astype(jnp.float32), (images.shape[0], size, size, 3), "linear")
        x = step_lib.normalise(images, s)
        prob = jax.nn.sigmoid(nnx.merge(corruption_def, params["corruption"])(x))
        logits = nnx.merge(classifier_def, params["classifier"])(x)
        masked = jnp.where(prob[..., None] >= 0.5, jnp.asarray(fill, jnp.float32), images.astype(jnp.float32))
        return dict(prob=prob, logits=logits, masked=jnp.clip(jnp.round(masked), 0, 255).astype(jnp.uint8))

    weights = {"corruption": params["corruption"]["params"], "classifier": params["classifier"]["params"]}
    return lambda images: jax.tree.map(np.asarray, predict(weights, images))


def make_strong_fn(config):
    """``strong_fn(images) -> {predicted, gradient}`` of the stronger classifier ``config.eval.strong_checkpoint``.

    ``gradient`` is its input gradient for its predicted class, max |.| over channels (the project's gradient
    baseline, ``perturb_jax.saliency.gradient_magnitude``).
    """
    model = checkpoint.load_model(config.eval.strong_checkpoint)
    graphdef, state = nnx.split(model)
    mean, std = np.asarray(config.model.mean, np.float32), np.asarray(config.model.std, np.float32)

    @jax.jit
    def strong(state, images):
        x = (images.astype(jnp.float32) / 255.0 - mean) / std
        logits = nnx.merge(graphdef, state)(x)[0]
        predicted = jnp.argmax(logits, -1)
        grads = jax.vmap(jax.grad(lambda xi, t: nnx.merge(graphdef, state)(xi[None])[0][0, t]))(x, predicted)
        return dict(predicted=predicted, gradient=saliency.gradient_magnitude(grads))

    return lambda images: jax.tree.map(np.asarray, strong(state, images))
