"""The base configuration of the main job and its validation; ``configs/*.py`` start from ``get_config``.

Every field can be overridden from the command line (``--config.perturb.lam_perceptual=1000``); the config is
locked, so a misspelt key fails. ``validate`` turns a bad value into a one-line ``ConfigError`` naming the field,
before anything is loaded or compiled.
"""

import math
import os
import re

import jax
import ml_collections
import numpy as np

import eval.datasets
from perturb_jax import methods
from perturb_jax.methods.perceptual_ball import objective, optimize, perturb
from perturb_jax.runtime.vgg import LAYER_NAMES, NUM_RELUS

EMBEDDED_CHECKPOINT = os.path.join(os.path.dirname(__file__), "assets", "clutter_shapes_vgg19bn_w8")
TRAIN_EMBEDDED = "python -m perturb_jax.train_classifier --config=configs/classifier.py --workdir=/tmp/classifier"
DATASETS = ("clutter_shapes", "imagenet2012", "caltech_birds2011", "folder")
STRATEGIES = ("value", "mean", "energy")
TARGETS = ("predicted", "ground_truth")
EVAL_RESOLUTIONS = ("model", "original")
DISTRIBUTED = ("auto", "on", "off")
# Method options the runner fills from config.model (DeepFool works in pixel space).
FROM_MODEL = ("mean", "std")


class ConfigError(ValueError):
    """A config value that cannot run; the message names the field and the fix."""


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Defaults shared by every variant: the embedded benchmark and classifier, the authors' optimiser."""
    c = ml_collections.ConfigDict()
    c.batch_size = 32  # global: split over every device of every process.
    c.num_figures = 16
    # The methods to run and score (perturb_jax.methods.NAMES); configs/table1.py lists all of them.
    c.methods = ("perceptual_ball", "gradient")
    c.target = "predicted"  # the class every method explains: authors' code (argmax); or "ground_truth".
    c.chunk_size = 256  # network evaluations per pass of the sampling methods (memory bound), whole batch.
    c.seed = 0  # the sampling methods' noise and masks (per batch: fold_in of the split and batch index).
    # Each method's options (the perceptual ball's are the perturb and saliency groups below).
    c.method = method_options()
    c.distributed = distributed_config()

    c.model = ml_collections.ConfigDict()
    c.model.checkpoint = EMBEDDED_CHECKPOINT  # our choice: shipped, made by TRAIN_EMBEDDED.
    c.model.mean = (0.5, 0.5, 0.5)
    c.model.std = (0.25, 0.25, 0.25)

    c.data = ml_collections.ConfigDict()
    c.data.name = "clutter_shapes"
    c.data.builder_config = "default"
    c.data.data_dir = ""  # TFDS data_dir; empty means TFDS's default (~/tensorflow_datasets).
    c.data.manual_dir = ""
    c.data.boxes = ""
    c.data.folder = ""
    c.data.image_size = 64
    c.data.resize = "squash"
    c.data.order = "file_name"
    c.data.eval_resolution = "model"
    # The tuning images pick each strategy's threshold; the evaluation images report it (never the same images).
    c.data.tune_split = "validation[:200]"
    c.data.eval_split = "validation[1000:1500]"

    c.perturb = ml_collections.ConfigDict()
    c.perturb.relu_layers = tuple(range(2, 14))
    c.perturb.lam_perceptual = 1e4  # paper Sec. 3 and authors' code (gamma).
    c.perturb.lam_pixel = 1.0  # paper Sec. 3 and authors' code (scalar).
    c.perturb.target_margin = -2.0  # authors' code (value); the paper's "T > 0" is a typo, see objective.py.
    c.perturb.reduction = "mean"  # authors' code (MSE); "sum" is the paper's squared norm.
    c.perturb.optimizer = "lbfgs"  # authors' code: torch L-BFGS, no line search.
    c.perturb.max_steps = 100  # authors' example notebook (200 is their function's default); embedded: 30.
    c.perturb.learning_rate = 1.0  # authors' code.
    c.perturb.history_size = 100  # authors' code.
    c.perturb.tolerance_grad = 1e-7  # torch L-BFGS default.
    c.perturb.tolerance_change = 1e-9  # torch L-BFGS default.

    c.saliency = ml_collections.ConfigDict()
    c.saliency.guided = True
    c.saliency.smoothing_sigma = 2.0  # authors' code.

    c.protocol = ml_collections.ConfigDict()
    c.protocol.strategies = STRATEGIES
    c.protocol.largest_component = True  # paper Sec. 3; False boxes every kept pixel (Fong & Vedaldi).
    c.protocol.value_alphas = tuple(np.round(np.arange(0, 0.951, 0.05), 2).tolist())
    c.protocol.energy_alphas = tuple(np.round(np.arange(0, 0.951, 0.05), 2).tolist())
    c.protocol.mean_alphas = tuple(np.round(np.arange(0, 10.01, 0.5), 2).tolist())
    c.protocol.max_box_acc_interval = 0.01  # wsolevaluation's cam_curve_interval.
    # Without tuning images (a folder of photos) each strategy is reported at these (our choice).
    c.protocol.given_alphas = ml_collections.ConfigDict({"value": 0.5, "mean": 1.0, "energy": 0.5})
    if variant not in VARIANTS:
        raise ConfigError(f"config variant {variant!r} is unknown; known: {sorted(VARIANTS)}")
    VARIANTS[variant](c)
    return c


def method_options() -> ml_collections.ConfigDict:
    """``method.<name>.<option>`` for every method but the perceptual ball, at the defaults of its module."""
    group = ml_collections.ConfigDict()
    for name in methods.NAMES:
        options = {k: o.default for k, o in methods.get(name).options.items() if k not in FROM_MODEL}
        if name != "perceptual_ball":
            group[name] = ml_collections.ConfigDict(options)
    return group


def method_settings(c: ml_collections.ConfigDict, name: str) -> dict:
    """The options ``methods.make_fn`` compiles ``name`` with: its group, the normalisation, the chunk size."""
    if name == "perceptual_ball":
        return {"settings": perturb.Settings.from_config(c)}
    options = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in c.method[name].items()}
    wanted = methods.get(name).options
    options |= {k: tuple(float(v) for v in c.model[k]) for k in FROM_MODEL if k in wanted}
    return options | {"chunk_size": int(c.chunk_size)}


def distributed_config() -> ml_collections.ConfigDict:
    """The ``distributed`` group of every job here: how ``perturb_jax.runtime.distributed.initialize`` joins a job."""
    d = ml_collections.ConfigDict()
    d.mode = "auto"  # auto: initialise when SLURM, a TPU pod or the fields below ask for it.
    d.coordinator_address = ""  # e.g. 127.0.0.1:12345 (with num_processes and process_id).
    d.num_processes = 0
    d.process_id = -1
    d.initialization_timeout = 120  # seconds to reach the coordinator.
    return d


def _imagenet(c: ml_collections.ConfigDict) -> None:
    """The paper's Table 1: torchvision VGG19_bn, the first 1000 ImageNet validation images, squash to 224."""
    c.model.checkpoint = ""  # required: python -m perturb_jax.runtime.convert_weights writes it.
    c.model.mean, c.model.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    c.data.name = "imagenet2012"
    c.data.builder_config = ""  # clutter_shapes only.
    c.data.image_size = 224
    c.data.eval_split = "validation[:1000]"  # paper Sec. 3, ordered by file name.
    c.data.tune_split = "validation[1000:1500]"  # our choice: disjoint held-out images for the thresholds.


def _cub(c: ml_collections.ConfigDict) -> None:
    """CUB-200-2011 with a VGG19_bn fine-tuned on it (the user's checkpoint); thresholds tuned on training images."""
    _imagenet(c)
    c.data.name = "caltech_birds2011"
    c.data.tune_split = "train[:500]"
    c.data.eval_split = "test"


def _folder(c: ml_collections.ConfigDict) -> None:
    """The user's photos (``--config.data.folder``), ImageNet VGG19_bn; no tuning split (see ``README``)."""
    _imagenet(c)
    c.data.name = "folder"
    c.data.tune_split = ""
    c.data.eval_split = "all"


def _tiny(c: ml_collections.ConfigDict) -> None:
    """A few images of the small ``tiny`` builder config and few steps: the smoke test of the whole job."""
    c.data.builder_config = "tiny"
    c.data.tune_split = "validation[:6]"
    c.data.eval_split = "validation[6:16]"
    c.batch_size = 4
    c.perturb.max_steps = 5
    c.num_figures = 4


def _embedded(c: ml_collections.ConfigDict) -> None:
    """The embedded benchmark: fewer L-BFGS steps than the authors' 100 (our choice, see README: Results)."""
    c.perturb.max_steps = 30


VARIANTS = {"": _embedded, "imagenet": _imagenet, "cub": _cub, "folder": _folder, "tiny": _tiny}


def _fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def check_distributed(d: ml_collections.ConfigDict) -> None:
    """Checks the ``distributed`` group (``distributed_config``); the coordinator fields are checked on joining."""
    _choice("distributed.mode", d.mode, DISTRIBUTED)
    if not d.initialization_timeout > 0:
        _fail("distributed.initialization_timeout", f"must be > 0 seconds, got {d.initialization_timeout}")


def check_batch_size(batch_size: int, num_devices: int, num_processes: int, field: str = "batch_size") -> None:
    """A global batch must split evenly over the processes and over the devices."""
    if batch_size < 1 or batch_size % num_devices or batch_size % num_processes:
        where = f" in {num_processes} processes" if num_processes > 1 else ""
        multiple = math.lcm(num_devices, num_processes)
        _fail(field, f"{batch_size} does not divide over the {num_devices} devices{where}; "
              f"use a multiple of {multiple}")


def validate(c: ml_collections.ConfigDict, num_devices: int | None = None, num_processes: int | None = None) -> None:
    """Checks every field the job reads; raises ``ConfigError`` with a one-line message naming the field.

    ``num_devices`` and ``num_processes`` default to JAX's (call ``distributed.initialize`` first).
    """
    p = c.perturb
    layers = tuple(p.relu_layers)
    if not layers:
        _fail("perturb.relu_layers", f"is empty; give ReLU numbers from 1 to {NUM_RELUS}, e.g. (5, 6, 7, 8, 9, 10)")
    bad = [k for k in layers if not isinstance(k, int) or not 1 <= k <= NUM_RELUS]
    if bad:
        _fail("perturb.relu_layers", f"{bad} outside 1-{NUM_RELUS} (ReLU numbers count the 16 VGG19_bn ReLUs from 1)")
    for field in ("lam_perceptual", "lam_pixel"):
        if not p[field] >= 0:
            _fail(f"perturb.{field}", f"must be >= 0, got {p[field]}")
    for field in ("max_steps", "history_size"):
        if not (isinstance(p[field], int) and p[field] >= 1):
            _fail(f"perturb.{field}", f"must be an integer >= 1, got {p[field]}")
    if not p.learning_rate > 0:
        _fail("perturb.learning_rate", f"must be > 0, got {p.learning_rate}")
    for field in ("tolerance_grad", "tolerance_change"):
        if not p[field] >= 0:
            _fail(f"perturb.{field}", f"must be >= 0, got {p[field]}")
    _choice("perturb.reduction", p.reduction, objective.REDUCTIONS)
    _choice("target", c.target, TARGETS)
    check_methods(c)
    _choice("perturb.optimizer", p.optimizer, optimize.OPTIMIZERS)
    if not c.saliency.smoothing_sigma >= 0:
        _fail("saliency.smoothing_sigma", f"must be >= 0, got {c.saliency.smoothing_sigma}")

    pr = c.protocol
    if not pr.strategies or any(s not in STRATEGIES for s in pr.strategies):
        _fail("protocol.strategies", f"must be a non-empty subset of {STRATEGIES}, got {tuple(pr.strategies)}")
    for strategy, upper in (("value", 1.0), ("energy", 1.0), ("mean", None)):
        alphas = tuple(pr[f"{strategy}_alphas"])
        if not alphas or any(not a >= 0 or (upper is not None and a > upper) for a in alphas):
            bound = f"in [0, {upper}]" if upper is not None else ">= 0"
            _fail(f"protocol.{strategy}_alphas", f"every alpha must be {bound}, got {alphas}")
    if not 0 < pr.max_box_acc_interval < 1:
        _fail("protocol.max_box_acc_interval", f"must be in (0, 1), got {pr.max_box_acc_interval}")

    d = c.data
    _choice("data.name", d.name, DATASETS)
    eval.datasets.check_builder_config(d)
    _choice("data.eval_resolution", d.eval_resolution, EVAL_RESOLUTIONS)
    if d.image_size < 32:
        _fail("data.image_size", f"must be >= 32 (VGG19_bn halves it five times), got {d.image_size}")
    if len(c.model.mean) != 3 or len(c.model.std) != 3 or min(c.model.std) <= 0:
        _fail("model.std", "model.mean and model.std need three values each, std > 0")
    if d.name == "folder" and not d.folder:
        _fail("data.folder", "is empty; give the folder of images (JPEG, PNG; optional Pascal-VOC .xml beside each)")
    if d.name == "imagenet2012" and not (d.manual_dir and d.boxes):
        _fail("data.manual_dir" if not d.manual_dir else "data.boxes",
              "is empty; ImageNet needs --config.data.manual_dir=DIR holding ILSVRC2012_img_val.tar and "
              "--config.data.boxes=ILSVRC2012_bbox_val_v3.tgz, a folder of its XMLs, or LOC_val_solution.csv")
    if d.name == "folder" and c.target == "ground_truth":
        _fail("target", "ground_truth needs labels, and a folder of photos has none; use predicted")
    if not d.eval_split:
        _fail("data.eval_split", "is empty; name the images to explain, e.g. validation[:1000]")
    check_disjoint(d.tune_split, d.eval_split)
    if not c.model.checkpoint:
        _fail("model.checkpoint", "is empty; give the directory of an Orbax checkpoint "
              "(python -m perturb_jax.runtime.convert_weights makes one from torchvision weights)")
    check_distributed(c.distributed)
    check_batch_size(c.batch_size, num_devices or jax.device_count(), num_processes or jax.process_count())
    if c.num_figures < 0:
        _fail("num_figures", f"must be >= 0, got {c.num_figures}")


def method_names(value) -> tuple[str, ...]:
    """``methods`` as a tuple of names, also from the one string ``--config.methods=gradient,rise`` gives."""
    return tuple(name for item in value for name in (part.strip(" ()'\"") for part in str(item).split(",")) if name)


def check_methods(c: ml_collections.ConfigDict) -> None:
    """``methods`` (made a tuple of names), ``chunk_size`` and every method's options: type, choices, range,
    layer names."""
    c.methods = names = method_names(c.methods)
    unknown = [m for m in names if m not in methods.NAMES]
    if not names or unknown or len(set(names)) != len(names):
        _fail("methods", f"{names} must name each method once, from {', '.join(methods.NAMES)}")
    if isinstance(c.chunk_size, bool) or not isinstance(c.chunk_size, int) or c.chunk_size < 1:
        _fail("chunk_size", f"must be an integer >= 1 (network evaluations per pass), got {c.chunk_size!r}")
    for strategy in STRATEGIES:
        alpha = c.protocol.given_alphas[strategy]
        if not alpha >= 0 or (strategy != "mean" and alpha > 1):
            _fail(f"protocol.given_alphas.{strategy}", f"must be in [0, 1] ([0, inf) for mean), got {alpha}")
    for name in c.method:
        for key, option in methods.get(name).options.items():
            if key not in FROM_MODEL:
                _check_option(f"method.{name}.{key}", c.method[name][key], option)


def _check_option(field: str, value, option) -> None:
    default = option.default
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        _fail(field, f"must be of type {type(default).__name__} (like the default {default!r}), got {value!r}")
    if option.choices and value not in option.choices:
        _fail(field, f"must be one of {option.choices}, got {value!r}")
    values = value if isinstance(value, (tuple, list)) else (value,)
    if option.minimum is not None and any(v < option.minimum for v in values):
        _fail(field, f"must be >= {option.minimum}, got {value!r}")
    if option.layer and value not in LAYER_NAMES:
        _fail(field, f"{value!r} is not a layer of VGG19_bn; accepted: features.0 to features.52, avgpool, "
              "classifier.0 to classifier.6 (torchvision module names; features.51 is ReLU 16)")


def _slice(split: str) -> tuple[str, int | None, int | None] | None:
    """'validation[1000:1512]' -> ('validation', 1000, 1512); None for what is not a plain integer slice."""
    m = re.fullmatch(r"(\w+)(?:\[(-?\d*):(-?\d*)\])?", split.strip())
    if not m:
        return None
    start, stop = (int(v) if v else None for v in m.group(2, 3))
    if (start or 0) < 0 or (stop or 0) < 0:
        return None
    return m.group(1), start, stop


def check_disjoint(tune: str, evaluation: str) -> None:
    """The tuning images must not be the evaluation images (checked where both are integer slices of one split)."""
    a, b = _slice(tune) if tune else None, _slice(evaluation)
    if not a or not b or a[0] != b[0]:
        return
    lo, hi = max(a[1] or 0, b[1] or 0), min(a[2] or 1 << 62, b[2] or 1 << 62)
    if lo < hi:
        _fail("data.tune_split", f"{tune!r} overlaps data.eval_split {evaluation!r}: thresholds would be tuned on "
              "the images they are reported on; choose disjoint slices")


def _choice(field: str, value, choices):
    if value not in choices:
        _fail(field, f"must be one of {choices}, got {value!r}")
