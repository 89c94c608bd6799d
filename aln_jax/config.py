"""The Adversarial Localization Network's configuration and its validation; ``configs/aln.py`` starts from here.

Every field can be overridden from the command line (``--config.train.target_accuracy=0.3``); the config is locked.
``validate`` turns a bad value into a one-line ``ConfigError`` naming the field, before anything is loaded or
compiled. The data and protocol groups are those of the explain job (``eval.datasets.data_config``,
``eval.scoring.protocol_config``), so both are scored alike.
"""

import json
import math
import os

import ml_collections

import eval.datasets
from aln_jax.masking import FILLS
from aln_jax.objectives import OBJECTIVES
from eval import scoring
from eval.errors import ConfigError
from perturb_jax.runtime import checkpoint, config_checks

DATASETS = ("clutter_shapes", "imagenet2012")
MAPS = ("superpixel", "pixel")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The default: our variant that localises on the embedded benchmark (README, "The Adversarial Localization
    Network"). ``variant`` is a comma-separated list of ``VARIANTS`` applied in order, e.g. 'paper,plain'."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 64  # global: split over every device of every process.
    c.num_steps = 1200  # embedded: 15 min of training on 2 CPU cores, 16 min with the evaluation.
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 3

    c.distributed = config_checks.distributed_config()

    # The perceptual ball's data fields (the readers of eval.datasets take them), the same tuning and evaluation images.
    c.data = eval.datasets.data_config()
    c.data.image_size = 64  # evaluation images (and the stronger classifier's input); the ALN sees aln.image_size.
    c.data.train_split = "train"
    c.data.cache_dir = ""  # superpixel cache; empty means ~/.cache/perturb_jax/aln.

    c.model = ml_collections.ConfigDict()
    c.model.mean = (0.5, 0.5, 0.5)  # the embedded classifier's normalisation.
    c.model.std = (0.25, 0.25, 0.25)

    c.slic = ml_collections.ConfigDict()
    c.slic.n_segments = 100  # our choice: about 6x6-pixel superpixels at 64x64 (the paper gives no number).
    c.slic.compactness = 10.0  # scikit-image's default.
    c.slic.sigma = 0.0  # scikit-image's default.
    c.slic.max_segments = 256  # segment ids are uint8.
    c.slic.workers = 2

    embedded = checkpoint.EMBEDDED
    c.aln = ml_collections.ConfigDict()
    c.aln.image_size = 64  # paper Sec. 3.3.
    c.aln.corruption_widths = (16, 32, 64, 128)  # encoder widths (ours; a VGG encoder has its own); the decoder
    c.aln.bottleneck = 256  # mirrors them. The fully connected layer carrying global information (Sec. 2.1).
    c.aln.classifier = embedded  # a VGG19_bn checkpoint directory (batch norms folded), or "small" (paper Sec. 3.3).
    c.aln.classifier_widths = (16, 32, 64, 128)  # "small" only: ours; 4 layers as the paper's Sec. 3.3.
    c.aln.fill = "random"  # occluded pixels: "constant" (paper), "blur", "noise" or "random" (one of them per image).
    c.aln.fill_value = 0.0  # the constant, in normalised space (paper Sec. 2: "value 0").
    c.aln.fill_sigma = 5.0  # ours: the blur fill's Gaussian, in pixels of aln.image_size.
    c.aln.encoder = embedded  # the corruption network's encoder: a VGG19_bn checkpoint directory, or "scratch" (paper).
    c.aln.freeze_encoder = True  # ours: the encoder's weights stay as loaded (fine-tuning them ended in collapse).
    # Dabkowski & Gal's class selector: the label embedded at the bottleneck (not the paper's).
    c.aln.class_conditional = True

    c.train = ml_collections.ConfigDict()
    c.train.objective = "preserve_destroy"  # or "confusion" (Eq. 1, paper), "destroy" (aln_jax/objectives.py).
    c.train.preserve_weight = 1.0  # preserve_destroy: weight of the kept region's cross-entropy.
    c.train.corruption_learning_rate = 3e-4  # ours (Adam).
    c.train.logit_bound = 4.0  # ours: occlusion logits kept in [-4, 4] with a live gradient (masking.py); 0: none.
    c.train.classifier_learning_rate = 1e-4  # ours: fine-tunes the trained VGG19_bn (2e-3: the small one, paper).
    c.train.target_accuracy = 0.2  # ours (10 classes: the paper's 0.1 is chance); ImageNet: 0.1.
    c.train.lambda_reg = 1.0  # ours; the initial weight of the occluded area (a fraction of the image).
    c.train.lambda_rate = 0.005  # lambda_reg *= exp(-rate) above the target accuracy, exp(+rate) below.
    c.train.lambda_min = 1e-4
    c.train.lambda_max = 10.0
    c.train.classifier_pretrain_steps = 0  # ours: the classifier first learns the clean images alone (see step.py).
    c.train.classifier_clean_weight = 1.0  # ours; 0 is the paper's (corrupted images only), see step.py.
    c.train.freeze_classifier = False  # True: the classifier stays as loaded (the paper's Sec. 3.4 ablation).

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 100
    c.eval.map = "pixel"  # the map thresholded for the box: the network's per-pixel output, or "superpixel" (paper:
    # each superpixel's mean, SLIC on the host: 3x the evaluation time and lower GT-known here, README).
    c.eval.strong_checkpoint = embedded  # Metric 2's classifier (paper Sec. 3.1).
    c.eval.compare_results = ()  # results.json files of perturb_jax.main runs to put in the same table.
    c.eval.num_figures = 16

    c.protocol = scoring.protocol_config()
    names = variant.split(",") if variant else []
    for name in names:
        if name not in VARIANTS:
            raise ConfigError(f"config variant {name!r} is unknown; known: {sorted(VARIANTS)} (comma-separated)")
    for name in sorted(names, key=lambda n: n not in ("paper", "imagenet")):  # the method first, then the data
        VARIANTS[name](c)
    return c


def _paper(c: ml_collections.ConfigDict) -> None:
    """The paper's ALN: Eq. (1), a constant fill, the 4-layer classifier co-trained, the encoder from scratch, no
    class selector; with our three departures that its 10-class version needs to train at all (README)."""
    c.num_steps = 5400  # 3000 classifier pre-training steps, then 2400 adversarial; about 30 min on 2 cores.
    c.aln.classifier = "small"
    c.aln.encoder = "scratch"
    c.aln.freeze_encoder = False
    c.aln.fill = "constant"
    c.aln.class_conditional = False
    c.eval.map = "superpixel"
    c.train.objective = "confusion"
    c.train.corruption_learning_rate = 1e-4  # ours: at 1e-3 the occlusion logits saturated within 50 steps.
    c.train.logit_bound = 0.0
    c.train.lambda_reg = 0.1
    c.train.lambda_rate = 0.01
    c.train.lambda_max = 100.0
    c.train.classifier_pretrain_steps = 3000
    c.train.classifier_learning_rate = 2e-3  # ours (the paper gives none), for the 4-layer classifier from scratch.


def _plain(c: ml_collections.ConfigDict) -> None:
    """The sanity benchmark: the same shapes on the smooth background without clutter (clutter_shapes/plain)."""
    c.data.builder_config = "plain"


def _tiny(c: ml_collections.ConfigDict) -> None:
    """A few steps on the 32x32 ``tiny`` builder config: the smoke test of training and evaluation."""
    c.data.builder_config = "tiny"
    c.data.image_size = 32
    c.data.tune_split = "validation[:8]"
    c.data.eval_split = "validation[8:24]"
    c.aln.image_size = 32
    c.aln.corruption_widths = (8, 16)
    c.aln.bottleneck = 16
    c.aln.classifier_widths = (8, 8, 16, 16)
    c.slic.n_segments = 30
    c.slic.workers = 1
    c.batch_size = 8
    c.num_steps = 6
    c.log_every = 2
    c.checkpoint_every = 3
    c.train.classifier_pretrain_steps = min(c.train.classifier_pretrain_steps, 2)
    c.eval.batch_size = 8
    c.eval.num_figures = 4


def _imagenet(c: ml_collections.ConfigDict) -> None:
    """The paper's ALN on ILSVRC-2012: trains on TFDS ``imagenet2012`` (the manual download) at 64x64, evaluates on
    the validation images with the ILSVRC boxes at 224x224, Metric 2 with torchvision's VGG19_bn converted."""
    _paper(c)
    c.data.name = "imagenet2012"
    c.data.builder_config = ""
    c.data.image_size = 224
    c.data.train_split = "train"
    c.data.eval_split = "validation[:1000]"
    c.data.tune_split = "validation[1000:1500]"
    c.model.mean, c.model.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    c.eval.strong_checkpoint = ""  # required: python -m perturb_jax.runtime.convert_weights writes it.
    c.train.target_accuracy = 0.1  # paper Sec. 2.4.
    c.train.classifier_clean_weight = 0.0  # the paper's classifier sees corrupted images only.
    c.train.classifier_pretrain_steps = 0
    c.batch_size = 256
    c.num_steps = 200_000


VARIANTS = {"paper": _paper, "plain": _plain, "tiny": _tiny, "imagenet": _imagenet}


def _fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def validate(c: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> None:
    """Checks every field the job reads; raises ``ConfigError`` with a one-line message naming the field."""
    config_checks.check_batch_size(c.batch_size, num_devices, num_processes)
    for field in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        if not (isinstance(c[field], int) and c[field] >= 1):
            _fail(field, f"must be an integer >= 1, got {c[field]!r}")
    config_checks.check_distributed(c.distributed)
    t = c.train
    for field in ("target_accuracy", "lambda_reg", "lambda_rate", "lambda_min", "lambda_max",
                  "classifier_clean_weight", "preserve_weight", "corruption_learning_rate",
                  "classifier_learning_rate", "logit_bound"):
        if not (isinstance(t[field], (int, float)) and math.isfinite(t[field])):
            _fail(f"train.{field}", f"must be a finite number, got {t[field]!r}")
    if not t.logit_bound >= 0:
        _fail("train.logit_bound", f"must be >= 0 (0: no bound), got {t.logit_bound}")
    for field in ("fill_value", "fill_sigma"):
        if not (isinstance(c.aln[field], (int, float)) and math.isfinite(c.aln[field])):
            _fail(f"aln.{field}", f"must be a finite number, got {c.aln[field]!r}")
    if t.objective not in OBJECTIVES:
        _fail("train.objective", f"must be one of {OBJECTIVES}, got {t.objective!r}")
    if not t.preserve_weight >= 0:
        _fail("train.preserve_weight", f"must be >= 0, got {t.preserve_weight}")
    if not 0 < t.target_accuracy < 1:
        _fail("train.target_accuracy", f"must be in (0, 1), got {t.target_accuracy}")
    if not t.lambda_reg >= 0:
        _fail("train.lambda_reg", f"must be >= 0, got {t.lambda_reg}")
    if not 0 <= t.lambda_min <= t.lambda_max:
        _fail("train.lambda_min", f"needs 0 <= lambda_min <= lambda_max, got {t.lambda_min}, {t.lambda_max}")
    if not (isinstance(t.classifier_pretrain_steps, int) and t.classifier_pretrain_steps >= 0):
        _fail("train.classifier_pretrain_steps", f"must be an integer >= 0, got {t.classifier_pretrain_steps!r}")
    if not t.classifier_clean_weight >= 0:
        _fail("train.classifier_clean_weight", f"must be >= 0, got {t.classifier_clean_weight}")
    if not t.lambda_rate >= 0:
        _fail("train.lambda_rate", f"must be >= 0, got {t.lambda_rate}")
    for field in ("corruption_learning_rate", "classifier_learning_rate"):
        if not t[field] > 0:
            _fail(f"train.{field}", f"must be > 0, got {t[field]}")
    a = c.aln
    depth = len(a.corruption_widths)
    if not depth or a.image_size % (2 ** depth):
        _fail("aln.image_size", f"{a.image_size} must be divisible by 2^{depth} (one halving per encoder width)")
    if len(a.classifier_widths) != 4:
        _fail("aln.classifier_widths", f"the paper's classifier has 4 convolutional layers, got "
              f"{tuple(a.classifier_widths)}")
    if any(w < 1 for w in (*a.corruption_widths, *a.classifier_widths, a.bottleneck)):
        _fail("aln.corruption_widths", "every width and aln.bottleneck must be >= 1")
    if a.classifier != "small" and not os.path.isfile(os.path.join(a.classifier, "model.json")):
        _fail("aln.classifier", f"must be 'small' or a VGG19_bn checkpoint directory holding model.json, got "
              f"{a.classifier!r}")
    if a.fill not in FILLS:
        _fail("aln.fill", f"must be one of {FILLS}, got {a.fill!r}")
    if not a.fill_sigma > 0:
        _fail("aln.fill_sigma", f"must be > 0 (pixels), got {a.fill_sigma}")
    if a.encoder != "scratch":
        _check_encoder(a.encoder, depth)
    elif a.freeze_encoder:
        _fail("aln.freeze_encoder", "a 'scratch' encoder must train; set it false or give aln.encoder a VGG19_bn "
              "checkpoint directory")
    s = c.slic
    if not 1 <= s.max_segments <= 256:
        _fail("slic.max_segments", f"must be in 1-256 (segment ids are uint8), got {s.max_segments}")
    if not 1 <= s.n_segments <= s.max_segments:
        _fail("slic.n_segments", f"must be in 1-{s.max_segments} (slic.max_segments), got {s.n_segments}")
    if c.data.name not in DATASETS:
        _fail("data.name", f"must be one of {DATASETS}, got {c.data.name!r}")
    eval.datasets.check_builder_config(c.data)
    if c.data.name == "imagenet2012":
        for field in ("manual_dir", "boxes"):
            if not c.data[field]:
                _fail(f"data.{field}", "is empty; ImageNet needs --config.data.manual_dir=DIR (ILSVRC2012_img_train"
                      ".tar and ILSVRC2012_img_val.tar) and --config.data.boxes (the ILSVRC validation boxes)")
    if not c.eval.strong_checkpoint:
        _fail("eval.strong_checkpoint", "is empty; give the Orbax checkpoint of the stronger classifier "
              "(python -m perturb_jax.runtime.convert_weights makes one from torchvision's VGG19_bn)")
    if c.eval.map not in MAPS:
        _fail("eval.map", f"must be one of {MAPS}, got {c.eval.map!r}")
    if c.data.eval_resolution != "model":
        _fail("data.eval_resolution", f"the ALN is scored at data.image_size: only 'model', got "
              f"{c.data.eval_resolution!r}")
    if c.eval.batch_size < 1 or c.eval.num_figures < 0:
        _fail("eval.batch_size", "eval.batch_size must be >= 1 and eval.num_figures >= 0")
    scoring.check_protocol(c.protocol)
    config_checks.check_disjoint(c.data.tune_split, c.data.eval_split)


def _check_encoder(path: str, depth: int) -> None:
    """``aln.encoder``: a VGG19_bn checkpoint directory (``perturb_jax.runtime.checkpoint``) deep enough for the
    encoder."""
    meta = os.path.join(path, "model.json")
    if not os.path.isfile(meta):
        _fail("aln.encoder", f"must be 'scratch' or a VGG19_bn checkpoint directory holding model.json, got {path!r}")
    with open(meta) as f:
        architecture = json.load(f).get("architecture")
    if architecture != "vgg19_bn":
        _fail("aln.encoder", f"{path} holds a {architecture!r} model; the encoder takes a VGG19_bn checkpoint")
    if depth > 4:
        _fail("aln.corruption_widths", f"a VGG19_bn encoder halves the image at most 4 times (its 5 blocks), got "
              f"{depth} widths; give at most 4")


# Why the default departs from the paper, field by field (the README's table is ``departures_table()``).
DEPARTURES = {
    "train.objective": "Eq. (1)'s minimum is not the object here (`aln_jax.experiments.diagnose`); Dabkowski & Gal's "
                       "preserve-and-destroy (the paper's [2]) asks the kept region alone to show the class "
                       "(500 steps: 0.602; Eq. (1) 0.276, destroy alone 0.310)",
    "aln.classifier": "the game needs a classifier that knows the shapes (the 4-layer one reaches 56%); still "
                      "co-trained (Sec. 2.3): frozen, it gave GT-known 0.672 instead of 0.804",
    "train.classifier_learning_rate": "ours: fine-tuning a trained VGG19_bn, not training the 4-layer one",
    "train.classifier_pretrain_steps": "the shipped classifier is trained",
    "aln.encoder": "features that know the shapes from the first step (from scratch: 0.194 at 500 steps)",
    "aln.freeze_encoder": "fine-tuning the VGG encoder at this learning rate ended in collapsed masks",
    "aln.class_conditional": "the label (the predicted class at evaluation) says which object to hide: level "
                             "on the embedded benchmark (0.800 without it), 0.926 against 0.732 on `plain`",
    "aln.fill": "constant, blurred image or noise drawn per image: the occluder is not a shape to read (constant "
                "alone: 0.108 at 500 steps)",
    "train.lambda_reg": "ours: the adaptive rule (Sec. 2.4) from a weight that balances the objective",
    "train.lambda_rate": "ours: a slower rule",
    "train.lambda_max": "ours",
    "train.corruption_learning_rate": "ours (at 1e-3 the occlusion logits saturated at p = 0 within 100 steps)",
    "train.logit_bound": "without it the occlusion probabilities saturated at 0 for good about 800 steps in",
    "eval.map": "no SLIC on the host at evaluation: 1.75 ms per image instead of 5.06, GT-known 0.804 instead of "
                "0.760 (the same checkpoint)",
    "num_steps": "the default localises after 1200 steps (16 minutes on 2 CPU cores with the evaluation)",
}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def departures() -> dict:
    """{field: (paper value, default value)} of every field where ``get_config()`` differs from ``:paper``."""
    default, paper = _flat(get_config().to_dict()), _flat(get_config("paper").to_dict())
    return {k: (paper[k], default[k]) for k in default if default[k] != paper[k]}


def departures_table() -> str:
    """The README's markdown table of ``departures()`` with ``DEPARTURES``'s reasons, in that order."""
    def shown(value):
        return "the shipped VGG19_bn" if value == checkpoint.EMBEDDED else f"`{value}`"

    rows = ["| field | paper (`:paper`) | default | why |", "|---|---|---|---|"]
    diff = departures()
    rows += [f"| `{k}` | {shown(diff[k][0])} | {shown(diff[k][1])} | {why} |" for k, why in DEPARTURES.items()]
    return "\n".join(rows)
