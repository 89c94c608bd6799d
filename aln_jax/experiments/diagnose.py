"""Where the ALN's objective has its minimum, and whether the corruption network finds it.

  python -m aln_jax.experiments.diagnose --config=configs/aln.py --workdir=DIR [--num_images=200] [--steps=300]
  python -m aln_jax.experiments.diagnose --config=configs/aln.py \\
      --classifier=perturb_jax/assets/clutter_shapes_vgg19bn_w8

Scores the candidate masks (``ROWS``, Sec. 2.2): objective, Eq. (1), Sec. 3.2 box (``evaluate_masks``). ``verdict``
reads the table. Writes ``table.md`` and ``diagnose.json`` to ``DIR/diagnose/`` (--workdir) or ``--out`` (--classifier).
"""

import functools
import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from skimage import transform  # noqa: E402

import eval.datasets  # noqa: E402
from aln_jax import evaluate, masking, objectives, step as step_lib, superpixels, train  # noqa: E402
from eval import boxes as box_ops  # noqa: E402
from perturb_jax.runtime import checkpoint, workdir as workdir_lib  # noqa: E402
from perturb_jax.runtime.checkpoint import CheckpointError  # noqa: E402
from perturb_jax.runtime.cli import parse_flags  # noqa: E402
from eval.errors import ConfigError  # noqa: E402
from perturb_jax.runtime import vgg  # noqa: E402

# The table's rows: each candidate occlusion mask is one 0/1 decision per superpixel broadcast to its pixels, as in
# training (Sec. 2.2):
#   none                     nothing occluded;
#   object                   the superpixels >= 50% inside the object's pixel mask (data with masks);
#   touching                 every superpixel with a pixel in the object's mask (data with masks);
#   box                      the superpixels >= 50% inside the true boxes;
#   centred square           the superpixels >= 50% inside a centred square of the object's area (box area without
#                            masks): the centre prior;
#   network                  the corruption network's superpixel mean probability >= 0.5 (--workdir; given the
#                            true label when ``aln.class_conditional``);
#   optimum from nothing     per image, Adam (lr 0.1, --steps) on one logit per superpixel from 0 (p = 0.5) on the
#                            config's objective + lambda_reg x area with training's Gumbel straight-through decisions,
#                            then sigmoid >= 0.5 (the per-image bound: a corruption network amortises this search);
#   optimum from the object  the same from logits +3 on the object's superpixels, -3 elsewhere (data with masks).
ROWS = ("none", "object", "touching", "box", "centred square", "network", "optimum from nothing",
        "optimum from the object")
DEFAULT_OUT = "/tmp/aln_diagnose"
LEARNING_RATE = 0.1
START_LOGIT = 3.0  # the optimum from the object starts at sigmoid(3) = 0.95 on the object, 0.05 elsewhere.
# The network "misses" when it keeps less than 1 - WELL_ABOVE of the object's advantage over occluding nothing.
WELL_ABOVE = 0.25
ORACLES = ("object", "touching", "box")  # the masks that hide the object, the verdict's reference.
MISS_GAP = 0.25  # an optimum below the oracle misses the object if its GT-known is this much lower.
AT_CHANCE = 1.5  # a classifier below 1.5x chance accuracy on clean images has collapsed.
TIE = 1e-6  # relative: an optimum that finds the oracle's own mask scores the same up to float rounding.


def superpixel_fractions(segments: np.ndarray, regions: np.ndarray, num_segments: int) -> np.ndarray:
    """(N, H, W) segment ids and boolean regions -> (N, S) fraction of each superpixel's pixels inside the region
    (0 for an empty superpixel)."""
    n = len(segments)
    ids = (segments.astype(np.int64) + num_segments * np.arange(n)[:, None, None]).ravel()
    inside = np.bincount(ids, np.asarray(regions, np.float64).ravel(), n * num_segments)
    counts = np.bincount(ids, minlength=n * num_segments)
    return (inside / np.maximum(counts, 1)).reshape(n, num_segments)


def box_regions(boxes: list, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) boolean union of each image's inclusive boxes (ymin, xmin, ymax, xmax)."""
    regions = np.zeros((len(boxes), *size), bool)
    for region, image_boxes in zip(regions, boxes):
        for y0, x0, y1, x1 in np.asarray(image_boxes, np.int64).reshape(-1, 4):
            region[y0:y1 + 1, x0:x1 + 1] = True
    return regions


def centred_squares(areas: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) boolean squares centred in the image, each of side round(sqrt(area)) (1 to min(H, W)) pixels."""
    height, width = size
    squares = np.zeros((len(areas), height, width), bool)
    for square, area in zip(squares, areas):
        side = int(np.clip(np.round(np.sqrt(area)), 1, min(size)))
        top, left = (height - side) // 2, (width - side) // 2
        square[top:top + side, left:left + side] = True
    return squares


def oracle_masks(segments: np.ndarray, object_masks: np.ndarray | None, boxes: list | None,
                 num_segments: int) -> dict:
    """The masks known from the ground truth, name -> (N, S) float32 0/1 per-superpixel decisions: 'none'; with
    ``object_masks`` (N, H, W) 'object' (>= 50% inside) and 'touching' (any pixel inside); with ``boxes`` (a list
    of (n, 4)) 'box' (>= 50% inside their union); with either 'centred square' (>= 50% inside a centred square of
    the object's pixel count, or of the boxes' without masks)."""
    segments = np.asarray(segments)
    size = segments.shape[1:]
    out = {"none": np.zeros((len(segments), num_segments))}
    if object_masks is not None:
        inside = superpixel_fractions(segments, object_masks, num_segments)
        out["object"], out["touching"] = inside >= 0.5, inside > 0
    regions = None if boxes is None else box_regions(boxes, size)
    if regions is not None:
        out["box"] = superpixel_fractions(segments, regions, num_segments) >= 0.5
    extent = object_masks if object_masks is not None else regions
    if extent is not None:
        squares = centred_squares(np.asarray(extent).sum((1, 2)), size)
        out["centred square"] = superpixel_fractions(segments, squares, num_segments) >= 0.5
    return {name: np.asarray(d, np.float32) for name, d in out.items()}


def to_pixels(decisions: jax.Array, segments: jax.Array) -> jax.Array:
    """(B, S) per-superpixel values and (B, H, W) segment ids -> (B, H, W) per-pixel values."""
    return jnp.take_along_axis(decisions, segments.reshape(len(segments), -1), 1).reshape(segments.shape)


def _keys(stream: int, indices: jax.Array) -> jax.Array:
    """One key per image, from its index in the diagnosed images (so no result depends on the batch size)."""
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(stream), i))(indices)


def _batched(fn, arrays: tuple, batch_size: int):
    """``fn(*rows)`` on consecutive batches of ``arrays`` (numpy, one length), the last padded with its last row so
    every call has one shape (one compilation); the outputs' leading axes concatenated, padding dropped."""
    n = len(arrays[0])
    size = min(batch_size or n, n)
    outs = []
    for start in range(0, n, size):
        rows = np.minimum(np.arange(start, start + size), n - 1)
        keep = min(size, n - start)
        outs.append(jax.tree.map(lambda v: np.asarray(v)[:keep], fn(*(a[rows] for a in arrays))))
    return jax.tree.map(lambda *v: np.concatenate(v), *outs)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _score(classifier_fn, s: step_lib.Settings, params, images, labels, segments, decisions, indices):
    """Per image: the objective, Eq. (1), whether the class survives, and the occluded fraction of ``decisions``."""
    masks = to_pixels(decisions, segments)
    objective, logits, _ = step_lib.corruption_objective(functools.partial(classifier_fn, params),
                                                         step_lib.normalise(images, s), masks, labels,
                                                         _keys(0, indices), s)
    return dict(objective=objective, confusion=objectives.confusion(logits), correct=logits.argmax(-1) == labels,
                area=masks.mean((1, 2)))


def evaluate_masks(classifier_fn, params, images: np.ndarray, labels: np.ndarray, segments: np.ndarray,
                   decisions: np.ndarray, settings: step_lib.Settings, lambda_reg: float, boxes: list | None,
                   batch_size: int | None = None) -> dict:
    """One table row: the (N, S) 0/1 ``decisions`` on uint8 ``images`` (N, H, W, 3) with int ``segments`` (N, H, W)
    against ``classifier_fn(params, normalised images) -> logits`` (jitted, ``params`` an argument).

    Returns objective (the config's, ``step.corruption_objective`` with a fixed key per image, mean), confusion
    (Eq. (1), mean), accuracy (on the occluded images), area (occluded fraction), total (objective + lambda_reg x
    area), gt_known (the mask's Sec. 3.2 box, ``evaluate.paper_boxes``, with IoU >= 0.5 against a true box, over the
    images with boxes; None without boxes) and per_image (objective, area, iou).
    """
    segments = np.asarray(segments, np.int32)
    decisions = np.asarray(decisions, np.float32)
    scored = _batched(functools.partial(_score, classifier_fn, settings, params),
                      (images, np.asarray(labels, np.int32), segments, decisions,
                       np.arange(len(images), dtype=np.int32)), batch_size)
    row = dict(objective=float(scored["objective"].mean()), confusion=float(scored["confusion"].mean()),
               accuracy=float(scored["correct"].mean()), area=float(scored["area"].mean()))
    row["total"] = row["objective"] + lambda_reg * row["area"]
    ious = np.full(len(images), np.nan)
    if boxes is not None:
        maps = decisions[np.arange(len(images))[:, None, None], segments]
        ious = np.array([box_ops.best_iou(b, g) for b, g in zip(evaluate.paper_boxes(maps), boxes)], np.float64)
    known = ~np.isnan(ious)
    row["gt_known"] = float((ious[known] >= 0.5).mean()) if known.any() else None
    row["per_image"] = dict(objective=scored["objective"].tolist(), area=scored["area"].tolist(),
                            iou=[None if np.isnan(v) else float(v) for v in ious])
    return row


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(9, 10))
def _adam_step(classifier_fn, s: step_lib.Settings, learning_rate: float, params, lambda_reg, x, labels, segments,
               image_keys, theta, opt_state, i):
    """One Adam step on each image's superpixel logits ``theta`` (B, S)."""
    keys = jax.vmap(jax.random.fold_in, (0, None))(image_keys, i)

    def loss(theta):
        # Each image's own objective + lambda_reg x area, summed: the images' logits do not interact.
        decisions = jax.vmap(masking.gumbel_bernoulli)(jax.nn.sigmoid(theta), keys)
        masks = to_pixels(decisions, segments)
        objective, _, _ = step_lib.corruption_objective(functools.partial(classifier_fn, params), x, masks, labels,
                                                        keys, s)
        return jnp.sum(objective + lambda_reg * masks.mean((1, 2)))

    updates, opt_state = optax.adam(learning_rate).update(jax.grad(loss)(theta), opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state


def _optimise(classifier_fn, s: step_lib.Settings, steps: int, learning_rate: float, params, lambda_reg, images,
              labels, segments, logits, indices):
    """``steps`` Adam steps on each image's superpixel logits, each a jitted call from Python (on XLA:CPU a
    ``fori_loop`` body ran several times slower than the same step called from Python)."""
    x, image_keys = step_lib.normalise(images, s), _keys(1, indices)
    theta = jnp.asarray(logits)
    opt_state = optax.adam(learning_rate).init(theta)
    for i in range(steps):
        theta, opt_state = _adam_step(classifier_fn, s, learning_rate, params, lambda_reg, x, labels, segments,
                                      image_keys, theta, opt_state, i)
    return theta


def optimise_masks(classifier_fn, params, images: np.ndarray, labels: np.ndarray, segments: np.ndarray,
                   init_logits: np.ndarray, settings: step_lib.Settings, lambda_reg: float, steps: int,
                   learning_rate: float = LEARNING_RATE, batch_size: int | None = None) -> np.ndarray:
    """The per-image optimum: (N, S) superpixel logits after ``steps`` Adam steps from ``init_logits``, each image
    minimising its objective + ``lambda_reg`` x occluded area under training's Gumbel straight-through decisions
    (``masking.gumbel_bernoulli``, fill per the config) against the fixed classifier. The mask is logits >= 0."""
    return _batched(functools.partial(_optimise, classifier_fn, settings, int(steps), float(learning_rate), params,
                                      jnp.float32(lambda_reg)),
                    (images, np.asarray(labels, np.int32), np.asarray(segments, np.int32),
                     np.asarray(init_logits, np.float32), np.arange(len(images), dtype=np.int32)), batch_size)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _network(corruption_fn, s: step_lib.Settings, params, images, labels, segments):
    """(B, S) decisions: superpixel mean occlusion probability >= 0.5."""
    x = step_lib.normalise(images, s)
    probs = masking.occlusion_probability(corruption_fn(params, x, labels if s.class_conditional else None),
                                          s.logit_bound)
    means = jax.vmap(masking.segment_means, (0, 0, None))(probs, segments, s.num_segments)
    return (means >= 0.5).astype(jnp.float32)


def network_masks(corruption_fn, params, images: np.ndarray, labels: np.ndarray, segments: np.ndarray,
                  settings: step_lib.Settings, batch_size: int | None = None) -> np.ndarray:
    """(N, S) decisions of the corruption network ``corruption_fn(params, x, labels or None) -> (B, H, W) logits``:
    superpixel mean probability >= 0.5 (given the true labels when ``settings.class_conditional``)."""
    return _batched(functools.partial(_network, corruption_fn, settings, params),
                    (images, np.asarray(labels, np.int32), np.asarray(segments, np.int32)), batch_size)


def cell(value) -> str:
    """A table cell: 3 decimals, or - for None."""
    return "-" if value is None else f"{value:.3f}"


def verdict(rows: dict, num_classes: int) -> str:
    """One paragraph from the rows (name -> evaluate_masks' values): does the objective prefer the object to the
    best mask the optimiser finds, and does the network reach it? First, a classifier no better than
    ``AT_CHANCE`` times chance on the unoccluded images leaves no game to play (a collapsed co-training, not the
    objective). The oracle is the best (lowest objective + lambda x area) of the masks that hide the object:
    'object', 'touching' and 'box', those the data allows (a mask of the superpixels mostly inside the object leaves
    slivers of it that a classifier may still read). The objective misses the object when the optimum from nothing
    scores lower than the oracle beyond float rounding (``TIE``: an optimum that finds the oracle's mask ties it)
    with a GT-known ``MISS_GAP`` below the oracle's (a lower mask that localises as well is the object, found more
    exactly than by the oracles' superpixel rules); else the learning misses it when the network's value exceeds
    the oracle's by more than ``WELL_ABOVE`` of the oracle's advantage over occluding nothing. An optimum from
    nothing that scores above occluding nothing is flagged as not converged."""
    chance = 1.0 / num_classes
    if rows["none"]["accuracy"] <= AT_CHANCE * chance:
        return (f"No verdict: the classifier is at chance on the unoccluded images (accuracy "
                f"{rows['none']['accuracy']:.3f}, chance {chance:.3f}), so no mask can confuse it further and every "
                f"row measures noise: its training collapsed (the learning, not the objective).")
    oracles = [name for name in ORACLES if name in rows]
    name = min(oracles, key=lambda n: rows[n]["total"]) if oracles else None
    if name is None:
        return "No verdict: the data has neither object masks nor boxes, so there is no object to compare with."
    ref, best, net = rows[name], rows.get("optimum from nothing"), rows.get("network")
    versus = f"objective + lambda x area: {name} oracle {ref['total']:.3f}" + (
        f", optimum from nothing {best['total']:.3f}" if best is not None else "")
    if (best is not None and best["total"] < ref["total"] - TIE * max(1.0, abs(ref["total"]))
            and best["gt_known"] < ref["gt_known"] - MISS_GAP):
        return (f"The objective misses the object: its minimum is elsewhere. The optimum from nothing occludes "
                f"{best['area']:.1%} of the image (the {name} oracle {ref['area']:.1%}) with GT-known "
                f"{cell(best['gt_known'])} (the oracle {cell(ref['gt_known'])}), and scores lower ({versus}).")
    unconverged = (" The optimum from nothing scores above occluding nothing, so it has not converged: raise --steps."
                   if best is not None and best["total"] > rows["none"]["total"] else "")
    if net is None:
        if best is None:
            return "No verdict: neither a per-image optimum (--steps=0) nor a corruption network to judge."
        return (f"The objective prefers the object ({versus}); no corruption network was given (--classifier), so "
                f"whether training finds it is not diagnosed here.{unconverged}")
    advantage = rows["none"]["total"] - ref["total"]
    numbers = f"{versus}, network {net['total']:.3f}, none {rows['none']['total']:.3f}"
    if net["total"] - ref["total"] > WELL_ABOVE * abs(advantage):
        return (f"The learning misses the object: the objective prefers it but the network does not find it ("
                f"{numbers}; the network occludes {net['area']:.1%} with GT-known {cell(net['gt_known'])})."
                f"{unconverged}")
    if best is None:
        return (f"The network reaches the object's value; the objective's minimum was not searched (--steps=0) "
                f"({numbers}).")
    return f"The objective and the network agree on the object ({numbers}).{unconverged}"


def markdown_table(rows: dict, objective: str) -> str:
    """The rows as a markdown table."""
    lines = [f"| mask | objective ({objective}) | Eq. (1) confusion | accuracy | occluded area | "
             "objective + lambda x area | GT-known |", "|---|" + "---:|" * 6]
    for name, r in rows.items():
        cells = [r["objective"], r["confusion"], r["accuracy"], r["area"], r["total"], r["gt_known"]]
        lines.append(f"| {name} | " + " | ".join(cell(v) for v in cells) + " |")
    return "\n".join(lines)


def _object_masks(data_config, split: str, image_ids: list) -> np.ndarray | None:
    """(N, H, W) boolean object masks of ``image_ids`` from the TFDS 'mask' feature, or None without one."""
    if data_config.name != "clutter_shapes":
        return None
    import tensorflow_datasets as tfds  # noqa: PLC0415 - TensorFlow only when the data has masks

    from eval.datasets import embedded  # noqa: PLC0415

    dataset_builder = embedded.builder(data_config)
    if "mask" not in dataset_builder.info.features:
        return None
    dataset = dataset_builder.as_dataset(split=split, shuffle_files=False,
                                         decoders={"image": tfds.decode.SkipDecoding()})
    wanted, found = set(image_ids), {}
    for record in tfds.as_numpy(dataset):
        image_id = record["image_id"].decode()
        if image_id in wanted:
            found[image_id] = record["mask"][..., 0] > 127
            if len(found) == len(wanted):
                break
    return np.stack([found[i] for i in image_ids])


def load_examples(config, num_images: int) -> dict:
    """The first ``num_images`` readable images of ``config.data.eval_split`` at ``aln.image_size``: images uint8
    (N, S, S, 3), labels, boxes (a list of (n, 4)), object_masks (N, S, S) or None, image_ids."""
    examples, _ = eval.datasets.load(config.data, config.data.eval_split)
    chosen = []
    for ex in examples:
        if "error" not in ex:
            chosen.append(ex)
        if len(chosen) == num_images:
            break
    images = np.stack([ex["image"] for ex in chosen])
    boxes = [np.asarray(ex["boxes"], np.int32).reshape(-1, 4) for ex in chosen]
    image_ids = [ex["image_id"] for ex in chosen]
    masks = _object_masks(config.data, config.data.eval_split, image_ids)
    size = (config.aln.image_size,) * 2
    if images.shape[1:3] != size:
        before = images.shape[1:3]
        resize = functools.partial(transform.resize, output_shape=size, order=1, anti_aliasing=True,
                                   preserve_range=True)
        images = np.stack([np.round(resize(im)) for im in images]).astype(np.uint8)
        boxes = [box_ops.box_to_size(b, before, size) for b in boxes]
        masks = None if masks is None else np.stack([resize(m.astype(np.float64)) >= 0.5 for m in masks])
    return dict(images=images, labels=np.array([ex["label"] for ex in chosen], np.int32), boxes=boxes,
                object_masks=masks, image_ids=image_ids)


def _models(config, workdir: str | None, classifier: str | None, num_classes: int):
    """(classifier_fn, its params, corruption_fn or None, its params, lambda_reg of the checkpoint or None, what)."""
    if workdir is not None:
        if not os.path.isdir(workdir):
            raise FileNotFoundError(f"--workdir {workdir} does not exist; give one trained by python -m aln_jax.main")
        workdir_lib.check_fingerprint(config, workdir, train._NOT_IN_FINGERPRINT, write=False)
        state, step = train.latest_state(config, workdir)
        corruption, classifier_net = train.build_models(config, num_classes)
        classifier_def, corruption_def = nnx.graphdef(classifier_net), nnx.graphdef(corruption)
        return (lambda p, x: nnx.merge(classifier_def, p)(x), state["classifier"]["params"],
                lambda p, x, labels: nnx.merge(corruption_def, p)(x, labels), state["corruption"]["params"],
                float(state["lambda_reg"]), f"{workdir} (step {step})")
    net = vgg.folded(checkpoint.load_model(classifier))
    if net.fc[-1].out_features != num_classes:
        raise ConfigError(f"--classifier: {classifier} has {net.fc[-1].out_features} classes, {config.data.name} has "
                          f"{num_classes}; give a checkpoint trained on config.data")
    classifier_def, params = nnx.split(net)
    return lambda p, x: nnx.merge(classifier_def, p)(x), params, None, None, None, classifier


def _check_arguments(workdir, classifier, num_images, steps, lambda_reg, out) -> None:
    if (workdir is None) == (classifier is None):
        raise ConfigError("--workdir / --classifier: give exactly one (a trained ALN workdir, or a VGG19_bn "
                          "checkpoint directory to diagnose the objective alone)")
    if workdir is not None and out is not None:
        raise ConfigError(f"--out: with --workdir the results go to {os.path.join(workdir, 'diagnose')}; drop --out")
    if num_images < 1:
        raise ConfigError(f"--num_images: must be >= 1, got {num_images}")
    if steps < 0:
        raise ConfigError(f"--steps: must be >= 0 (0: no per-image optimum), got {steps}")
    if lambda_reg is not None and not (math.isfinite(lambda_reg) and lambda_reg >= 0):
        raise ConfigError(f"--lambda_reg: must be a finite number >= 0, got {lambda_reg}")


def run(config, workdir: str | None = None, classifier: str | None = None, num_images: int = 200, steps: int = 300,
        lambda_reg: float | None = None, out: str | None = None) -> dict:
    """The diagnostic of a trained ``workdir`` (its classifier and corruption network) or of a VGG19_bn
    ``classifier`` checkpoint alone (folded), on the first ``num_images`` images of ``config.data.eval_split`` (at
    ``aln.image_size``, SLIC superpixels as ``config.slic``), each mask of ``ROWS`` scored by ``evaluate_masks``;
    prints the table and the verdict, writes them with the raw numbers (``table.md``, ``diagnose.json``) to
    ``workdir/diagnose`` or ``out`` (default /tmp/aln_diagnose) and returns what diagnose.json holds.
    ``lambda_reg`` defaults to the checkpoint's (workdir) or ``config.train.lambda_reg``."""
    _check_arguments(workdir, classifier, num_images, steps, lambda_reg, out)
    if config.data.name not in train.NUM_CLASSES:
        raise ConfigError(f"config.data.name: must be one of {sorted(train.NUM_CLASSES)}, got {config.data.name!r}")
    eval.datasets.check_split(config.data, config.data.eval_split, "data.eval_split")
    classifier_fn, params, corruption_fn, corruption_params, trained_lambda, source = _models(
        config, workdir, classifier, train.NUM_CLASSES[config.data.name])
    if lambda_reg is None:
        lambda_reg = trained_lambda if trained_lambda is not None else float(config.train.lambda_reg)
    s = step_lib.Settings.from_config(config)
    data = load_examples(config, num_images)
    images, labels, boxes = data["images"], data["labels"], data["boxes"]
    sp = config.slic
    segments = superpixels.slic_batch(images, sp.n_segments, sp.compactness, sp.sigma, sp.max_segments,
                                      sp.workers).astype(np.int32)
    batch = config.eval.batch_size
    decisions = oracle_masks(segments, data["object_masks"], boxes, s.num_segments)
    if corruption_fn is not None:
        decisions["network"] = network_masks(corruption_fn, corruption_params, images, labels, segments, s, batch)
    starts = {"optimum from nothing": np.zeros(decisions["none"].shape, np.float32)} if steps else {}
    if "object" in decisions and steps:
        starts["optimum from the object"] = np.where(decisions["object"] > 0, START_LOGIT, -START_LOGIT)
    for name, start in starts.items():
        logits = optimise_masks(classifier_fn, params, images, labels, segments, start, s, lambda_reg, steps,
                                batch_size=batch)
        decisions[name] = (logits >= 0).astype(np.float32)
    rows = {name: evaluate_masks(classifier_fn, params, images, labels, segments, decisions[name], s, lambda_reg,
                                 boxes, batch) for name in ROWS if name in decisions}
    rows["none"]["gt_known"] = None  # an empty mask's box is the whole image: not a localisation
    table = markdown_table(rows, s.objective)
    result = dict(source=source, split=config.data.eval_split, num_images=len(images), image_ids=data["image_ids"],
                  objective=s.objective, fill=s.fill, lambda_reg=lambda_reg, steps=steps, learning_rate=LEARNING_RATE,
                  rows=rows, verdict=verdict(rows, train.NUM_CLASSES[config.data.name]), table=table)
    directory = os.path.join(workdir, "diagnose") if workdir is not None else out or DEFAULT_OUT
    os.makedirs(directory, exist_ok=True)
    header = (f"{len(images)} images of {config.data.eval_split}, {source}, objective {s.objective}, fill {s.fill}, "
              f"lambda_reg {lambda_reg:.4g}, {steps} Adam steps per image")
    with open(os.path.join(directory, "table.md"), "w") as f:
        f.write(f"{header}\n\n{table}\n\n{result['verdict']}\n")
    with open(os.path.join(directory, "diagnose.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"{header}\n\n{table}\n\n{result['verdict']}\n\nwritten to {directory}")
    return dict(result, directory=directory)


def _define_flags() -> None:
    """The command line's flags, defined only when run as a program (importing this module defines none)."""
    config_flags.DEFINE_config_file("config", None, "The ALN config; with --workdir the one it was trained with, "
                                    "overrides included.", lock_config=True)
    flags.DEFINE_string("workdir", None, "A trained ALN workdir: diagnoses its classifier and corruption network.")
    flags.DEFINE_string("classifier", None, "A VGG19_bn checkpoint directory: diagnoses the objective alone.")
    flags.DEFINE_integer("num_images", 200, "Images: the first of config.data.eval_split.")
    flags.DEFINE_integer("steps", 300, "Adam steps per image for the optimum rows.")
    flags.DEFINE_float("lambda_reg", None, "Weight of the occluded area (default: the checkpoint's with --workdir, "
                       "config.train.lambda_reg with --classifier).")
    flags.DEFINE_string("out", None, f"Output directory with --classifier (default {DEFAULT_OUT}).")
    flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if not f["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        run(f.config, f.workdir, f.classifier, f.num_images, f.steps, f.lambda_reg, f.out)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {' '.join(str(e).split())}") from None


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
