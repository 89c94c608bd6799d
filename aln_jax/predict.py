"""Jitted prediction for evaluation: the ALN's occlusion map and class, and the stronger classifier's (Metric 2).

Weights are arguments of the jitted functions (never closed over); each returned function takes uint8 images at the
evaluation size and returns numpy arrays, as ``aln_jax.evaluate`` expects.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skimage import transform

from aln_jax import masking, step as step_lib, superpixels
from perturb_jax.methods import common
from perturb_jax.runtime import checkpoint


def make_predict_fn(config, corruption_def: nnx.GraphDef, classifier_def: nnx.GraphDef, params: dict):
    """``predict_fn(images) -> {prob, logits, masked}`` of the trained ALN (``params``: the state's two networks).

    ``prob`` is the occlusion probability map at the ALN's input size that the paper's Sec. 3.2 thresholds: with
    ``config.eval.map`` 'superpixel' (the paper's) each superpixel's mean probability, the probability with which
    training occludes it (Sec. 2.2), which needs SLIC on the host; with 'pixel' (default) the network's raw
    per-pixel output, which training constrains only through those means. ``masked`` shows the image with the
    pixels of probability >= 0.5 occluded.
    """
    s = step_lib.Settings.from_config(config)
    size, sp = config.aln.image_size, config.slic
    fill = np.round((np.asarray(s.mean) + s.fill_value * np.asarray(s.std)) * 255)

    @jax.jit
    def predict(params, images, segments):
        x = step_lib.normalise(images, s)
        logits = nnx.merge(classifier_def, params["classifier"])(x)
        # class-conditional: the ALN classifier's predicted class selects the object (Dabkowski & Gal).
        labels = jnp.argmax(logits, -1) if s.class_conditional else None
        prob = masking.occlusion_probability(nnx.merge(corruption_def, params["corruption"])(x, labels), s.logit_bound)
        if segments is not None:
            means = jax.vmap(masking.segment_means, (0, 0, None))(prob, segments, s.num_segments)
            prob = jnp.take_along_axis(means, segments.reshape(len(means), -1), 1).reshape(prob.shape)
        masked = jnp.where(prob[..., None] >= 0.5, jnp.asarray(fill, jnp.float32), images.astype(jnp.float32))
        return dict(prob=prob, logits=logits, masked=jnp.clip(jnp.round(masked), 0, 255).astype(jnp.uint8))

    weights = {"corruption": params["corruption"]["params"], "classifier": params["classifier"]["params"]}

    def predict_fn(images):
        if images.shape[1:3] != (size, size):
            images = np.stack([np.round(transform.resize(im, (size, size), order=1, anti_aliasing=True,
                                                         preserve_range=True)) for im in images]).astype(np.uint8)
        segments = None
        if config.eval.map == "superpixel":
            segments = superpixels.slic_batch(images, sp.n_segments, sp.compactness, sp.sigma, sp.max_segments)
            segments = segments.astype(np.int32)
        return jax.tree.map(np.asarray, predict(weights, images, segments))

    return predict_fn


def make_strong_fn(config):
    """``strong_fn(images) -> {predicted, gradient}`` of the stronger classifier ``config.eval.strong_checkpoint``.

    ``gradient`` is its input gradient for its predicted class, max |.| over channels (the project's gradient
    baseline, ``perturb_jax.methods.common.max_abs_over_channels``).
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
        return dict(predicted=predicted, gradient=common.max_abs_over_channels(grads))

    return lambda images: jax.tree.map(np.asarray, strong(state, images))
