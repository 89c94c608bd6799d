"""The Adversarial Localization Network's configuration and its validation; ``configs/aln.py`` starts from here.

Every field can be overridden from the command line (``--config.train.target_accuracy=0.3``); the config is locked.
``validate`` turns a bad value into a one-line ``ConfigError`` naming the field, before anything is loaded or
compiled. The protocol fields are those of the perceptual ball (``perturb_jax.config``), so both are scored alike.
"""

import os

import ml_collections

from perturb_jax import config as perturb_config
from perturb_jax.config import ConfigError, STRATEGIES

DATASETS = ("clutter_shapes", "imagenet2012")
MAPS = ("superpixel", "pixel")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Defaults: the embedded benchmark's training split, 64x64 inputs (the paper's size), adaptive lambda_reg."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 64  # global: split over every device of every process.
    c.num_steps = 5400  # embedded: 3000 classifier pre-training steps, then 2400 adversarial; about 30 min on 2 cores.
    c.log_every = 50
    c.checkpoint_every = 500
    c.keep_checkpoints = 3

    c.distributed = perturb_config.distributed_config()

    # The perceptual ball's data fields (the readers of eval.datasets take them), the same tuning and evaluation images.
    base = perturb_config.get_config()
    c.data = ml_collections.ConfigDict(base.data.to_dict())
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

    c.aln = ml_collections.ConfigDict()
    c.aln.image_size = 64  # paper Sec. 3.3.
    c.aln.corruption_widths = (16, 32, 64, 128)  # encoder widths (ours); the decoder mirrors them.
    c.aln.bottleneck = 256  # the fully connected layer carrying global information (Sec. 2.1).
    c.aln.classifier = "small"  # "small": the paper's 4-layer network; or a VGG19_bn checkpoint directory, fine-tuned.
    c.aln.classifier_widths = (16, 32, 64, 128)  # ours; the paper's "simple 4-layer convolutional network".
    c.aln.fill_value = 0.0  # occluded pixels, in normalised space (paper Sec. 2: "value 0").

    c.train = ml_collections.ConfigDict()
    c.train.corruption_learning_rate = 1e-4  # ours: at 1e-3 the occlusion logits saturated within 50 steps.
    c.train.classifier_learning_rate = 2e-3
    c.train.target_accuracy = 0.2  # embedded: ours (10 classes: the paper's 0.1 is chance); ImageNet: 0.1.
    c.train.lambda_reg = 0.1  # ours; the initial weight of the occluded area (a fraction of the image) in Eq. (1).
    c.train.lambda_rate = 0.01  # lambda_reg *= exp(-rate) above the target accuracy, exp(+rate) below.
    c.train.lambda_min = 1e-4
    c.train.lambda_max = 100.0
    c.train.classifier_pretrain_steps = 3000  # ours: the classifier first learns the clean images (see step.py).
    c.train.classifier_clean_weight = 1.0  # ours; 0 is the paper's (corrupted images only), see step.py.
    c.train.sigmoid_grad_floor = 0.0  # ours: > 0 keeps saturated occlusion probabilities trainable (masking.py).
    c.train.freeze_classifier = False  # paper Sec. 3.4's ablation: only the corruption network trains.

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 100
    c.eval.map = "superpixel"  # the map thresholded for the box: superpixel means (SLIC on the host) or "pixel".
    c.eval.strong_checkpoint = perturb_config.EMBEDDED_CHECKPOINT  # Metric 2's classifier (paper Sec. 3.1).
    c.eval.compare_results = ()  # results.json files of perturb_jax.main runs to put in the same table.
    c.eval.num_figures = 16

    c.protocol = ml_collections.ConfigDict(base.protocol.to_dict())
    if variant not in VARIANTS:
        raise ConfigError(f"config variant {variant!r} is unknown; known: {sorted(VARIANTS)}")
    VARIANTS[variant](c)
    return c


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
    c.train.classifier_pretrain_steps = 2
    c.eval.batch_size = 8
    c.eval.num_figures = 4


def _imagenet(c: ml_collections.ConfigDict) -> None:
    """ILSVRC-2012: trains on TFDS ``imagenet2012`` (the manual download) at 64x64, evaluates on the validation
    images with the ILSVRC boxes at 224x224, Metric 2 with torchvision's VGG19_bn converted."""
    c.data.name = "imagenet2012"
    c.data.builder_config = ""
    c.data.image_size = 224
    c.data.train_split = "train"
    c.data.eval_split = "validation[:1000]"
    c.data.tune_split = "validation[1000:1500]"
    c.model.mean, c.model.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    c.eval.strong_checkpoint = ""  # required: python -m perturb_jax.convert_weights writes it.
    c.train.target_accuracy = 0.1  # paper Sec. 2.4.
    c.train.classifier_clean_weight = 0.0  # the paper's classifier sees corrupted images only.
    c.train.classifier_pretrain_steps = 0
    c.batch_size = 256
    c.num_steps = 200_000


VARIANTS = {"": lambda c: None, "tiny": _tiny, "imagenet": _imagenet}


def _fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def validate(c: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> None:
    """Checks every field the job reads; raises ``ConfigError`` with a one-line message naming the field."""
    perturb_config.check_batch_size(c.batch_size, num_devices, num_processes)
    for field in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        if not (isinstance(c[field], int) and c[field] >= 1):
            _fail(field, f"must be an integer >= 1, got {c[field]!r}")
    perturb_config.check_distributed(c.distributed)
    t = c.train
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
    s = c.slic
    if not 1 <= s.max_segments <= 256:
        _fail("slic.max_segments", f"must be in 1-256 (segment ids are uint8), got {s.max_segments}")
    if not 1 <= s.n_segments <= s.max_segments:
        _fail("slic.n_segments", f"must be in 1-{s.max_segments} (slic.max_segments), got {s.n_segments}")
    if c.data.name not in DATASETS:
        _fail("data.name", f"must be one of {DATASETS}, got {c.data.name!r}")
    if c.data.name == "imagenet2012":
        for field in ("manual_dir", "boxes"):
            if not c.data[field]:
                _fail(f"data.{field}", "is empty; ImageNet needs --config.data.manual_dir=DIR (ILSVRC2012_img_train"
                      ".tar and ILSVRC2012_img_val.tar) and --config.data.boxes (the ILSVRC validation boxes)")
    if not c.eval.strong_checkpoint:
        _fail("eval.strong_checkpoint", "is empty; give the Orbax checkpoint of the stronger classifier "
              "(python -m perturb_jax.convert_weights makes one from torchvision's VGG19_bn)")
    if c.eval.map not in MAPS:
        _fail("eval.map", f"must be one of {MAPS}, got {c.eval.map!r}")
    if c.data.eval_resolution != "model":
        _fail("data.eval_resolution", f"the ALN is scored at data.image_size: only 'model', got "
              f"{c.data.eval_resolution!r}")
    if c.eval.batch_size < 1 or c.eval.num_figures < 0:
        _fail("eval.batch_size", "eval.batch_size must be >= 1 and eval.num_figures >= 0")
    pr = c.protocol
    if not pr.strategies or any(x not in STRATEGIES for x in pr.strategies):
        _fail("protocol.strategies", f"must be a non-empty subset of {STRATEGIES}, got {tuple(pr.strategies)}")
    perturb_config.check_disjoint(c.data.tune_split, c.data.eval_split)
