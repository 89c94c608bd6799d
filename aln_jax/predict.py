"""Prediction for evaluation: the ALN's occlusion map and class, and the stronger classifier's (Metric 2; ALN paper
Sec. 3.1), over a split.

``make_predict_fn`` and ``make_strong_fn`` jit the two networks (weights are arguments of the jitted functions, never
closed over); each returned function takes uint8 images at the evaluation size and returns numpy arrays.
``predict_split`` runs both over a split in padded batches; with many processes each predicts its ``process_share``
and ``gather`` merges the shares on every process (``merge_shares``), as ``aln_jax.evaluate`` expects.
"""

import io
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skimage import transform

from aln_jax import masking, step as step_lib, superpixels
from eval import boxes as box_ops
from perturb_jax.methods import common
from perturb_jax.runtime import checkpoint, distributed

FIGURE_KEYS = ("images", "masked", "prob_small")  # kept for the first ``num_figures`` images only


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


def process_share(examples, process_index: int, process_count: int):
    """Every ``process_count``-th example starting at ``process_index``: this process's part of a split."""
    return (ex for i, ex in enumerate(examples) if i % process_count == process_index)


def _predict_batch(batch: list, predict_fn, strong_fn, batch_size: int) -> tuple[dict, float]:
    """One batch padded to ``batch_size`` with its last image (no recompiling), padding dropped after the calls."""
    n = len(batch)
    images = np.stack([ex["image"] for _, ex in batch] + [batch[-1][1]["image"]] * (batch_size - n))
    start = time.perf_counter()
    aln = {k: np.asarray(v) for k, v in predict_fn(images).items()}
    strong = {k: np.asarray(v) for k, v in strong_fn(images).items()}
    seconds = time.perf_counter() - start
    size = images.shape[1:3]
    prob = aln["prob"][:n].astype(np.float32)
    prob_full = prob if prob.shape[1:] == size else np.stack(
        [box_ops.resize_map(m, size) for m in prob]).astype(np.float32)
    out = dict(position=np.array([p for p, _ in batch], np.int64),
               image_id=np.array([ex["image_id"] for _, ex in batch], str),
               label=np.array([ex["label"] for _, ex in batch], np.int32),
               boxes=[np.asarray(ex["boxes"], np.int32).reshape(-1, 4) for _, ex in batch],
               prob=prob_full, aln_predicted=aln["logits"][:n].argmax(-1).astype(np.int32),
               strong_predicted=strong["predicted"][:n].astype(np.int32),
               gradient=strong["gradient"][:n].astype(np.float32),
               images=images[:n], masked=aln["masked"][:n].astype(np.uint8), prob_small=prob)
    return out, seconds


def predict_split(examples, predict_fn, strong_fn, batch_size: int, num_figures: int) -> dict:
    """Predicts every readable example of ``examples`` (contract examples, ``eval.datasets``) in batches.

    ``predict_fn(images) -> {prob (B, h, w), logits (B, K), masked (B, h, w, 3)}`` (the ALN);
    ``strong_fn(images) -> {predicted (B,), gradient (B, H, W)}`` (Metric 2's classifier, Sec. 3.1); both always
    receive ``batch_size`` uint8 images (B, H, W, 3). Returns numpy arrays: position (index in ``examples``),
    image_id, label, boxes (list of (n, 4) int32), prob (N, H, W: ``prob`` resized with ``boxes.resize_map`` when
    h != H), aln_predicted, strong_predicted, gradient; images, masked, prob_small for the first ``num_figures``;
    skipped_id, skipped_reason, skipped_position for records with an 'error'; predict_seconds (1,): wall time of the
    two functions' calls.
    """
    parts, skipped, batch, seconds = [], [], [], 0.0

    def flush():
        nonlocal seconds
        part, took = _predict_batch(batch, predict_fn, strong_fn, batch_size)
        room = max(0, num_figures - sum(len(p["images"]) for p in parts))
        parts.append({k: v[:room] if k in FIGURE_KEYS else v for k, v in part.items()})
        seconds += took

    for position, ex in enumerate(examples):
        if "error" in ex:
            skipped.append((position, ex))
            continue
        batch.append((position, ex))
        if len(batch) == batch_size:
            flush()
            batch = []
    if batch:
        flush()
    out = {"boxes": [b for p in parts for b in p["boxes"]]}
    empty = dict(position=np.zeros(0, np.int64), image_id=np.zeros(0, str), label=np.zeros(0, np.int32),
                 prob=np.zeros(0, np.float32), aln_predicted=np.zeros(0, np.int32),
                 strong_predicted=np.zeros(0, np.int32), gradient=np.zeros(0, np.float32),
                 images=np.zeros(0, np.uint8), masked=np.zeros(0, np.uint8), prob_small=np.zeros(0, np.float32))
    for key, nothing in empty.items():
        out[key] = np.concatenate([p[key] for p in parts]) if parts else nothing
    out["skipped_id"] = np.array([ex["image_id"] for _, ex in skipped], str)
    out["skipped_reason"] = np.array([ex["error"] for _, ex in skipped], str)
    out["skipped_position"] = np.array([p for p, _ in skipped], np.int64)
    out["predict_seconds"] = np.array([seconds])
    return out


def merge_shares(shares: list[dict]) -> dict:
    """Process p's ``predict_split`` of ``process_share(examples, p, len(shares))``, for every p, as one split.

    Rows go back to the order of ``examples``; position and skipped_position become indices in ``examples``; the
    figure rows are every share's, in that order (the first num_figures of them are the split's first);
    predict_seconds has one entry per process.
    """
    count = len(shares)
    merged = {"predict_seconds": np.concatenate([s["predict_seconds"] for s in shares])}
    for key in shares[0]:
        if key == "predict_seconds":
            continue
        anchor = "skipped_position" if key.startswith("skipped_") else "position"
        where = np.concatenate([np.asarray(s[anchor][:len(s[key])], np.int64) * count + p
                                for p, s in enumerate(shares)])
        order = np.argsort(where, kind="stable")
        if key == anchor:
            merged[key] = where[order]
        elif key == "boxes":
            flat = [b for s in shares for b in s[key]]
            merged[key] = [flat[i] for i in order]
        else:
            merged[key] = np.concatenate([s[key] for s in shares if len(s[key])] or [shares[0][key]])[order]
    return merged


def gather(split: dict) -> dict:
    """Every process's ``predict_split`` of its ``process_share``, merged on every process (``merge_shares``).

    Each share travels as one ``np.savez`` archive (strings included, boxes padded with ``results_store``); with
    one process the result equals the input.
    """
    buffer = io.BytesIO()
    np.savez(buffer, **{**split, "boxes": box_ops.pad_boxes(split["boxes"])})
    shares = []
    for data in distributed.allgather_bytes(buffer.getvalue()):
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            share = dict(archive)
        share["boxes"] = [b.astype(np.int32) for b in box_ops.unpad_boxes(share["boxes"])]
        shares.append(share)
    return merge_shares(shares)
