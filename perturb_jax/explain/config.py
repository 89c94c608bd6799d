"""The base configuration of the main job and its validation; ``configs/*.py`` start from ``get_config``.

Every field can be overridden from the command line (``--config.method.rise.num_masks=500``); the config is
locked, so a misspelt key fails. ``validate`` turns a bad value into a one-line ``ConfigError`` naming the field,
before anything is loaded or compiled.
"""


import jax
import ml_collections

import eval.datasets
from eval import scoring
from eval.errors import ConfigError
from perturb_jax import methods
from perturb_jax.runtime import checkpoint
from perturb_jax.runtime.config_checks import (check_batch_size, check_disjoint, check_distributed, choice,
                                                distributed_config, fail)
from perturb_jax.runtime.vgg import LAYER_NAMES

EMBEDDED_CHECKPOINT = checkpoint.EMBEDDED
DATASETS = ("clutter_shapes", "imagenet2012", "caltech_birds2011", "folder")
TARGETS = ("predicted", "ground_truth")
EVAL_RESOLUTIONS = ("model", "original")
# Method options the runner fills from config.model (DeepFool works in pixel space).
FROM_MODEL = ("mean", "std")


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
    c.method = method_options()  # method.<name>.<option>, at the defaults of each method's module
    c.distributed = distributed_config()

    c.model = ml_collections.ConfigDict()
    c.model.checkpoint = EMBEDDED_CHECKPOINT  # our choice: shipped, made by checkpoint.TRAIN_EMBEDDED.
    c.model.mean = (0.5, 0.5, 0.5)
    c.model.std = (0.25, 0.25, 0.25)

    c.data = eval.datasets.data_config()

    c.protocol = scoring.protocol_config()
    if variant not in VARIANTS:
        raise ConfigError(f"config variant {variant!r} is unknown; known: {sorted(VARIANTS)}")
    VARIANTS[variant](c)
    return c


def method_options() -> ml_collections.ConfigDict:
    """``method.<name>.<option>`` for every method, at the defaults of its module."""
    group = ml_collections.ConfigDict()
    for name in methods.NAMES:
        group[name] = ml_collections.ConfigDict(
            {k: o.default for k, o in methods.get(name).options.items() if k not in FROM_MODEL})
    return group


def method_settings(c: ml_collections.ConfigDict, name: str) -> dict:
    """The options ``methods.make_fn`` compiles ``name`` with: its group, the normalisation, the chunk size."""
    options = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in c.method[name].items()}
    wanted = methods.get(name).options
    options |= {k: tuple(float(v) for v in c.model[k]) for k in FROM_MODEL if k in wanted}
    return options | {"chunk_size": int(c.chunk_size)}


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
    c.method.perceptual_ball.max_steps = 5
    c.num_figures = 4


def _embedded(c: ml_collections.ConfigDict) -> None:
    """The embedded benchmark: fewer L-BFGS steps than the authors' 100 (our choice, see README: Results)."""
    c.method.perceptual_ball.max_steps = 30


VARIANTS = {"": _embedded, "imagenet": _imagenet, "cub": _cub, "folder": _folder, "tiny": _tiny}


def validate(c: ml_collections.ConfigDict, num_devices: int | None = None, num_processes: int | None = None) -> None:
    """Checks every field the job reads; raises ``ConfigError`` with a one-line message naming the field.

    ``num_devices`` and ``num_processes`` default to JAX's (call ``distributed.initialize`` first).
    """
    choice("target", c.target, TARGETS)
    check_methods(c)
    scoring.check_protocol(c.protocol)

    d = c.data
    choice("data.name", d.name, DATASETS)
    eval.datasets.check_builder_config(d)
    choice("data.eval_resolution", d.eval_resolution, EVAL_RESOLUTIONS)
    if d.image_size < 32:
        fail("data.image_size", f"must be >= 32 (VGG19_bn halves it five times), got {d.image_size}")
    if len(c.model.mean) != 3 or len(c.model.std) != 3 or min(c.model.std) <= 0:
        fail("model.std", "model.mean and model.std need three values each, std > 0")
    if d.name == "folder" and not d.folder:
        fail("data.folder", "is empty; give the folder of images (JPEG, PNG; optional Pascal-VOC .xml beside each)")
    if d.name == "imagenet2012" and not (d.manual_dir and d.boxes):
        fail("data.manual_dir" if not d.manual_dir else "data.boxes",
              "is empty; ImageNet needs --config.data.manual_dir=DIR holding ILSVRC2012_img_val.tar and "
              "--config.data.boxes=ILSVRC2012_bbox_val_v3.tgz, a folder of its XMLs, or LOC_val_solution.csv")
    if d.name == "folder" and c.target == "ground_truth":
        fail("target", "ground_truth needs labels, and a folder of photos has none; use predicted")
    if not d.eval_split:
        fail("data.eval_split", "is empty; name the images to explain, e.g. validation[:1000]")
    check_disjoint(d.tune_split, d.eval_split)
    if not c.model.checkpoint:
        fail("model.checkpoint", "is empty; give the directory of an Orbax checkpoint "
              "(python -m perturb_jax.runtime.convert_weights makes one from torchvision weights)")
    check_distributed(c.distributed)
    check_batch_size(c.batch_size, num_devices or jax.device_count(), num_processes or jax.process_count())
    if c.num_figures < 0:
        fail("num_figures", f"must be >= 0, got {c.num_figures}")


def method_names(value) -> tuple[str, ...]:
    """``methods`` as a tuple of names, also from the one string ``--config.methods=gradient,rise`` gives."""
    return tuple(name for item in value for name in (part.strip(" ()'\"") for part in str(item).split(",")) if name)


def check_methods(c: ml_collections.ConfigDict) -> None:
    """``methods`` (made a tuple of names), ``chunk_size`` and every method's options: type, choices, range,
    layer names."""
    c.methods = names = method_names(c.methods)
    unknown = [m for m in names if m not in methods.NAMES]
    if not names or unknown or len(set(names)) != len(names):
        fail("methods", f"{names} must name each method once, from {', '.join(methods.NAMES)}")
    if isinstance(c.chunk_size, bool) or not isinstance(c.chunk_size, int) or c.chunk_size < 1:
        fail("chunk_size", f"must be an integer >= 1 (network evaluations per pass), got {c.chunk_size!r}")
    for strategy in scoring.STRATEGIES:
        alpha = c.protocol.given_alphas[strategy]
        if not alpha >= 0 or (strategy != "mean" and alpha > 1):
            fail(f"protocol.given_alphas.{strategy}", f"must be in [0, 1] ([0, inf) for mean), got {alpha}")
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
        kinds = int if isinstance(default[0], int) else (int, float)
        ok = isinstance(value, (tuple, list)) and len(value) > 0 and all(
            isinstance(v, kinds) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        fail(field, f"must be of type {type(default).__name__} (like the default {default!r}), got {value!r}")
    if option.choices and value not in option.choices:
        fail(field, f"must be one of {option.choices}, got {value!r}")
    values = value if isinstance(value, (tuple, list)) else (value,)
    if option.minimum is not None and any(v < option.minimum for v in values):
        fail(field, f"must be >= {option.minimum}, got {value!r}")
    if option.maximum is not None and any(v > option.maximum for v in values):
        fail(field, f"must be <= {option.maximum}, got {value!r}")
    if option.layer and value not in LAYER_NAMES:
        fail(field, f"{value!r} is not a layer of VGG19_bn; accepted: features.0 to features.52, avgpool, "
              "classifier.0 to classifier.6 (torchvision module names; features.51 is ReLU 16)")
