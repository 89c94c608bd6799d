"""The weak-localisation scorer both jobs call (the explain job, ``perturb_jax.explain.scores``; the ALN,
``aln_jax.evaluate``), and the ``protocol`` config group it reads.

``score(settings, tune, evaluation)`` takes maps and ground-truth boxes in the same pixels and gives, per strategy,
the error with alpha tuned on the tuning split and reported on the evaluation split (Fong & Vedaldi 2017;
``protocol.tune_and_evaluate``), or at the given alphas without tuning images; MaxBoxAcc (wsolevaluation, Choe et
al. 2020); and each image's box and IoU at the chosen alphas. ``priors`` scores the centred box (its side tuned on
the tuning split) and the whole image. Images without ground-truth boxes are not scored. Nothing here knows of
methods, labels or the jobs' configs.
"""

import dataclasses
from typing import Mapping, NamedTuple, Sequence

import ml_collections
import numpy as np

from eval import protocol
from eval.errors import ConfigError

STRATEGIES = ("value", "mean", "energy")  # the order of the tables


@dataclasses.dataclass(frozen=True)
class Settings:
    """The protocol's settings (``protocol_config``): strategies in order, the largest component's box or every
    kept pixel's, each strategy's alpha sweep and given alpha, and MaxBoxAcc's threshold interval."""

    strategies: tuple[str, ...]
    largest_component: bool
    alphas: Mapping[str, tuple[float, ...]]
    given_alphas: Mapping[str, float]
    max_box_acc_interval: float

    @classmethod
    def from_config(cls, group: ml_collections.ConfigDict) -> "Settings":
        """From a ``protocol`` config group."""
        strategies = tuple(group.strategies)
        return cls(strategies, bool(group.largest_component),
                   {s: tuple(float(a) for a in group[f"{s}_alphas"]) for s in strategies},
                   {s: float(group.given_alphas[s]) for s in strategies}, float(group.max_box_acc_interval))


class Split(NamedTuple):
    """One split: (H, W) maps and (n, 4) ground-truth boxes, in the same pixels; ``failed`` (bool per image, or
    None): maps that could not be made, each a localisation failure however its box falls."""

    maps: Sequence[np.ndarray]
    boxes: Sequence[np.ndarray]
    failed: np.ndarray | None = None


def scored(boxes) -> np.ndarray:
    """Which images are scored: those with at least one ground-truth box."""
    return np.array([len(b) > 0 for b in boxes], bool)


def _kept(items, keep):
    return [x for x, k in zip(items, keep) if k]


def _failed(split: Split) -> np.ndarray:
    return np.zeros(len(split.maps), bool) if split.failed is None else np.asarray(split.failed, bool)


def _sweep(settings: Settings, split: Split, alphas: dict) -> dict:
    """Each scored image's success at each alpha; a failed map fails at every alpha."""
    keep = scored(split.boxes)
    success = protocol.sweep(_kept(split.maps, keep), _kept(split.boxes, keep), settings.strategies,
                             settings.largest_component, alphas)
    failed = _failed(split)[keep]
    return {s: v & ~failed[:, None] for s, v in success.items()}


def score(settings: Settings, tune: Split | None, evaluation: Split) -> dict:
    """Scores one set of maps (``tune`` may be None or empty). Returns:

    num_scored {tune, eval}: images with boxes; tuned: both splits have some, so alphas are tuned;
    errors (None without scored evaluation images): tuned, ``protocol.tune_and_evaluate``'s {strategy: ...,
    'best': ...}; else {strategy: {alpha, eval_error}} at ``settings.given_alphas``; best: errors['best'] or None;
    max_box_acc ({'0.3', '0.5', '0.7', 'mean', 'best_threshold'}, or None) on the scored evaluation maps;
    chosen_alpha {strategy: alpha}: the errors' alphas, the given ones without errors; per_image {tune, eval}:
    ``protocol.per_image_results`` of every image at the chosen alphas, a failed map never correct.
    """
    tune = tune or Split([], [])
    strategies = settings.strategies
    alphas = {s: np.asarray(settings.alphas[s], float) for s in strategies}
    num_scored = {"tune": int(scored(tune.boxes).sum()), "eval": int(scored(evaluation.boxes).sum())}
    tuned = bool(num_scored["tune"] and num_scored["eval"])
    errors = max_box_acc = None
    if num_scored["eval"]:
        if tuned:
            errors = protocol.tune_and_evaluate(_sweep(settings, tune, alphas), _sweep(settings, evaluation, alphas),
                                                alphas)
        else:
            given = {s: np.asarray([settings.given_alphas[s]], float) for s in strategies}
            success = _sweep(settings, evaluation, given)
            errors = {s: {"alpha": float(given[s][0]), "eval_error": float(1 - success[s][:, 0].mean())}
                      for s in strategies}
        keep = scored(evaluation.boxes)
        max_box_acc = {str(k): v for k, v in protocol.max_box_acc(
            _kept(evaluation.maps, keep), _kept(evaluation.boxes, keep),
            interval=settings.max_box_acc_interval).items()}
        chosen = {s: errors[s]["alpha"] for s in strategies}
    else:
        chosen = {s: float(settings.given_alphas[s]) for s in strategies}
    per_image = {}
    for name, split in (("tune", tune), ("eval", evaluation)):
        per = protocol.per_image_results(split.maps, split.boxes, chosen, settings.largest_component)
        failed = _failed(split)
        per_image[name] = {s: {**r, "correct": r["correct"] & ~failed} for s, r in per.items()}
    return {"num_scored": num_scored, "tuned": tuned, "errors": errors,
            "best": errors.get("best") if errors else None, "max_box_acc": max_box_acc, "chosen_alpha": chosen,
            "per_image": per_image}


def priors(tune_boxes, tune_sizes, eval_boxes, eval_sizes) -> dict:
    """The trivial baselines on the images with boxes (sizes: (H, W) of the boxes' pixels): centred_box
    (``protocol.centred_box_baseline``, its side chosen on the tuning split) when both splits have such images,
    whole_image {eval_error} when the evaluation split has; {} when it has none."""
    keep_t, keep_e = scored(tune_boxes), scored(eval_boxes)
    if not keep_e.any():
        return {}
    out = {}
    if keep_t.any():
        out["centred_box"] = protocol.centred_box_baseline(_kept(tune_boxes, keep_t), _kept(tune_sizes, keep_t),
                                                           _kept(eval_boxes, keep_e), _kept(eval_sizes, keep_e))
    out["whole_image"] = {"eval_error": protocol.whole_image_error(_kept(eval_boxes, keep_e),
                                                                   _kept(eval_sizes, keep_e))}
    return out


def protocol_config() -> ml_collections.ConfigDict:
    """The ``protocol`` group both jobs score with (``Settings.from_config`` reads it)."""
    p = ml_collections.ConfigDict()
    p.strategies = STRATEGIES
    p.largest_component = True  # paper Sec. 3; False boxes every kept pixel (Fong & Vedaldi).
    p.value_alphas = tuple(np.round(np.arange(0, 0.951, 0.05), 2).tolist())
    p.energy_alphas = tuple(np.round(np.arange(0, 0.951, 0.05), 2).tolist())
    p.mean_alphas = tuple(np.round(np.arange(0, 10.01, 0.5), 2).tolist())
    p.max_box_acc_interval = 0.01  # wsolevaluation's cam_curve_interval.
    # Without tuning images (a folder of photos) each strategy is reported at these (our choice).
    p.given_alphas = ml_collections.ConfigDict({"value": 0.5, "mean": 1.0, "energy": 0.5})
    return p


def _fail(field: str, message: str):
    raise ConfigError(f"config.{field}: {message}")


def check_protocol(pr: ml_collections.ConfigDict) -> None:
    """Checks the ``protocol`` group; a bad value raises a one-line ``ConfigError`` naming the field."""
    if not pr.strategies or any(s not in STRATEGIES for s in pr.strategies):
        _fail("protocol.strategies", f"must be a non-empty subset of {STRATEGIES}, got {tuple(pr.strategies)}")
    for strategy, upper in (("value", 1.0), ("energy", 1.0), ("mean", None)):
        alphas = tuple(pr[f"{strategy}_alphas"])
        if not alphas or any(not a >= 0 or (upper is not None and a > upper) for a in alphas):
            bound = f"in [0, {upper}]" if upper is not None else ">= 0"
            _fail(f"protocol.{strategy}_alphas", f"every alpha must be {bound}, got {alphas}")
    if not 0 < pr.max_box_acc_interval < 1:
        _fail("protocol.max_box_acc_interval", f"must be in (0, 1), got {pr.max_box_acc_interval}")
