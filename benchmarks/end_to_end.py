r"""End to end on the same embedded images: the authors' perceptual-ball procedure (their torch ``LBFGS.step``, one
image at a time) against our main job (``configs/guided.py``, vmapped L-BFGS), both stored in the main job's batch
files (``WORKDIR/jax``, ``WORKDIR/torch``) and scored by the same code: seconds, images per second, L-BFGS steps per
image and the localisation error. ``--num_tune``/``--num_eval`` take the first images of the config's splits; the
workdir must be new or empty. What each side runs and what is timed, and the figures: BENCHMARKS.md.

    python -m benchmarks.end_to_end --workdir=/tmp/end_to_end --out=/tmp/end_to_end.json
"""

import contextlib
import datetime
import functools
import importlib.util
import json
import os
import re
import runpy
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import eval.datasets  # noqa: E402
from benchmarks import common  # noqa: E402
from eval import boxes as box_ops  # noqa: E402
from eval.errors import ConfigError  # noqa: E402
from perturb_jax.explain import job as explain, report, results_store, scores  # noqa: E402
from perturb_jax.methods.perceptual_ball import objective, saliency  # noqa: E402
from perturb_jax.runtime import cli  # noqa: E402
from perturb_jax.runtime.checkpoint import CheckpointError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


class UsageError(ValueError):
    """A flag value that cannot run; the message names the flag."""


def guided_config(num_tune: int, num_eval: int, jax_steps: int | None):
    """``configs/guided.py`` with its splits cut to their first ``num_tune``/``num_eval`` images."""
    config = runpy.run_path(os.path.join(ROOT, "configs", "guided.py"))["get_config"]()
    config.data.tune_split = head(config.data.tune_split, num_tune, "num_tune")
    config.data.eval_split = head(config.data.eval_split, num_eval, "num_eval")
    if jax_steps is not None:
        config.method.perceptual_ball.max_steps = jax_steps
    return config


def head(split: str, n: int, flag: str) -> str:
    """The first ``n`` images of a sliced split: ('validation[1000:1500]', 3) -> 'validation[1000:1003]'."""
    name, start, stop = re.fullmatch(r"(\w+)\[(\d*):(\d+)\]", split).groups()
    available = int(stop) - int(start or 0)
    if not 1 <= n <= available:
        raise UsageError(f"--{flag} must be in [1, {available}] (the images of {split}), got {n}")
    return f"{name}[{start}:{int(start or 0) + n}]"


@contextlib.contextmanager
def timing(module, name: str, seconds: list):
    """Within the block, ``module.name`` is wrapped to append the wall time of each call to ``seconds``."""
    original = getattr(module, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    setattr(module, name, timed)
    try:
        yield
    finally:
        setattr(module, name, original)


def run_ours(config, workdir: str) -> dict:
    """Our main job on ``workdir``; returns its summary and timings."""
    seconds = []
    start = time.perf_counter()
    with timing(explain, "explain_split", seconds):
        summary = explain.explain_and_evaluate(config, workdir)
    return dict(summary=summary, explain_s=sum(seconds), whole_s=time.perf_counter() - start)


@functools.partial(jax.jit, static_argnames=("guided", "sigma"))
def maps(x_adv, x, grad, *, guided: bool, sigma: float):
    """One NHWC image's (saliency, gradient) maps, as ``perturb.explain_batch`` makes them."""
    pert = saliency.perturbation_norm(x_adv, x)
    smoothed = saliency.gaussian_smooth(saliency.guided(pert, grad) if guided else pert, sigma)
    return smoothed, saliency.gradient_magnitude(grad)


def _nhwc(t) -> np.ndarray:
    """A (1, C, H, W) torch tensor as an (H, W, C) array."""
    return t[0].detach().numpy().transpose(1, 2, 0)


def _margin(logits, target: np.ndarray) -> np.float32:
    """Eq. (1) of a (1, classes) torch tensor, by our ``objective.multiclass_margin``."""
    return np.float32(objective.multiclass_margin(logits.detach().numpy(), target)[0])


def explain_image_torch(model, x: np.ndarray, config, torch_steps: int) -> dict:
    """The authors' procedure on one normalised (H, W, C) image; the per-image values our job stores."""
    import torch  # noqa: PLC0415 - optional dependency.

    from benchmarks.references import torch_reference  # noqa: PLC0415 - needs torch.

    p = config.method.perceptual_ball
    terms = dict(relu_layers=p.relu_layers, lam_perceptual=p.lam_perceptual, lam_pixel=p.lam_pixel,
                 value=p.target_margin)
    x0 = torch.from_numpy(x.transpose(2, 0, 1)[None].copy())
    xg = x0.clone().requires_grad_(True)
    logits = model(xg)
    target = logits.detach().argmax(1)
    grad = torch.autograd.grad(logits[0, target[0]], xg)[0]
    x_adv, evaluations = torch_reference.perceptual_ball(
        model, x0, target, **terms, max_iter=torch_steps, history_size=p.history_size,
        tolerance_grad=p.tolerance_grad, tolerance_change=p.tolerance_change)
    with torch.no_grad():
        logits_adv = model(x_adv)
        loss = np.float32(torch_reference.perceptual_ball_loss(model, x_adv, x0, target, **terms)[0])
    smoothed, gradient = maps(_nhwc(x_adv), x, _nhwc(grad), guided=bool(p.guided),
                              sigma=float(p.smoothing_sigma))
    t = target.numpy().astype(np.int32)
    return dict(saliency=np.asarray(smoothed), gradient=np.asarray(gradient), predicted=t[0], target=t[0],
                margin=_margin(logits, t), margin_adv=_margin(logits_adv, t), loss=loss,
                # One too many where a tolerance stops torch's step after max_iter - 1 iterations.
                steps=np.int32(common.torch_iterations(torch_steps, evaluations)),
                failed=not (np.isfinite(loss) and bool(torch.isfinite(x_adv).all())))


def explain_split_torch(model, config, workdir: str, split_name: str, split: str, torch_steps: int) -> None:
    """``explain.explain_split`` with the authors' procedure, image by image: the same batch files."""
    examples = list(eval.datasets.load(config.data, split)[0])
    for index, (first, n) in enumerate(explain.batch_bounds(len(examples), config.batch_size)):
        batch = [ex for ex in examples[first:first + n] if "error" not in ex]
        skipped = [ex for ex in examples[first:first + n] if "error" in ex]
        start = time.perf_counter()
        per_image = [explain_image_torch(model, explain.normalise(ex["image"], config), config, torch_steps)
                     for ex in batch]
        seconds = time.perf_counter() - start
        out = {k: np.stack([r[k] for r in per_image]) for k in per_image[0]} if batch else {}
        record = {"skipped_id": np.array([ex["image_id"] for ex in skipped], dtype=str),
                  "skipped_reason": np.array([ex["error"] for ex in skipped], dtype=str)}
        if batch:
            record.update(
                image_id=np.array([ex["image_id"] for ex in batch]), predicted=out.pop("predicted"),
                target=out.pop("target"), label=np.array([ex["label"] for ex in batch], np.int32),
                boxes=box_ops.pad_boxes([ex["boxes"] for ex in batch]),
                boxes_original=box_ops.pad_boxes([ex["boxes_original"] for ex in batch]),
                original_size=np.array([ex["original_size"] for ex in batch], np.int32))
            timing = dict(batch_seconds=np.array([seconds]), batch_compile_seconds=np.zeros(1),
                          batch_images=np.array([len(batch)]))
            gradient = dict(saliency=out.pop("gradient"), failed=np.zeros(len(batch), bool))
            for method, arrays in (("perceptual_ball", out), ("gradient", gradient)):
                results_store.write_batch(results_store.batch_path(workdir, split_name, index, method),
                                          arrays | timing)
        if index == 0 and split_name == "eval" and batch[: config.num_figures]:
            record["images"] = np.stack([ex["image"] for ex in batch[: config.num_figures]])
        results_store.write_batch(results_store.batch_path(workdir, split_name, index), record)


def run_authors(config, workdir: str, torch_steps: int) -> dict:
    """The authors' procedure on the config's splits, scored as ``explain_and_evaluate`` scores; summary, timings."""
    import torch  # noqa: PLC0415 - optional dependency.

    torch.set_num_threads(os.cpu_count())
    start = time.perf_counter()
    model = common.build_weights("embedded")[0].eval().requires_grad_(False)
    os.makedirs(workdir)
    explain_start = time.perf_counter()
    for split_name, split in zip(explain.SPLITS, (config.data.tune_split, config.data.eval_split)):
        explain_split_torch(model, config, workdir, split_name, split, torch_steps)
    explain_s = time.perf_counter() - explain_start
    tune, evaluation = (results_store.read_split(workdir, name, config.methods) for name in explain.SPLITS)
    summary, per_image = scores.score(config, tune, evaluation)
    report.write_all(workdir, config, summary, per_image, evaluation)
    return dict(summary=summary, explain_s=explain_s, whole_s=time.perf_counter() - start,
                threads=torch.get_num_threads())


def record(name: str, description: str, result: dict, workdir: str) -> dict:
    """One procedure's row: images, seconds, images/s, mean steps (from its batch files), its summary."""
    steps = np.concatenate([results_store.read_split(workdir, s, ["perceptual_ball"]).get(
        "perceptual_ball/steps", np.zeros(0)) for s in explain.SPLITS])
    images = sum(result["summary"]["num_images"][s] for s in explain.SPLITS)
    return dict(procedure=name, description=description, workdir=workdir, images=images,
                images_per_s=images / result["explain_s"], mean_steps=float(steps.mean()),
                max_steps_taken=int(steps.max()), **result)


def table(rows: list[dict], strategies) -> str:
    """The markdown table: speed, steps, and the localisation error per strategy at its tuned alpha."""
    head = ["procedure", "images", "seconds (explaining)", "seconds (whole run)", "images/s",
            "steps per image (mean)", *strategies, "best on tuning"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for r in rows:
        errors = r["summary"].get("localisation_error", {}).get(r["summary"]["methods"][0], {})
        cells = [f"{errors[s]['eval_error']:.3f} (α {errors[s]['alpha']:g})" if s in errors else "-"
                 for s in strategies]
        best = errors.get("best")
        cells.append(f"{best['eval_error']:.3f} ({best['strategy']})" if best else "-")
        lines.append(f"| {r['procedure']} | {r['images']} | {r['explain_s']:.1f} | {r['whole_s']:.1f} | "
                     f"{r['images_per_s']:.3g} | {r['mean_steps']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(workdir: str, out: str, num_tune: int, num_eval: int, torch_steps: int, jax_steps: int | None) -> dict:
    """Both procedures on the same images into ``workdir``/{jax,torch}; writes the JSON ``out``, returns it."""
    if importlib.util.find_spec("torch") is None:
        raise UsageError("the authors' procedure needs torch: pip install -e .[torch]")
    if os.path.isdir(workdir) and os.listdir(workdir):
        raise UsageError(f"--workdir {workdir} is not empty; give a new or empty directory")
    config = guided_config(num_tune, num_eval, jax_steps)
    ours_dir, authors_dir = os.path.join(workdir, "jax"), os.path.join(workdir, "torch")
    p = config.method.perceptual_ball
    ours = record("ours (JAX, vmapped L-BFGS)", f"explain.explain_and_evaluate, batches of {config.batch_size}, "
                  f"max_steps {p.max_steps}", run_ours(config, ours_dir), ours_dir)
    authors = record("authors (torch LBFGS.step)", f"torch_reference.perceptual_ball, one image at a time, "
                     f"max_iter {torch_steps}", run_authors(config, authors_dir, torch_steps), authors_dir)

    rows = [ours, authors]
    result = dict(date=datetime.date.today().isoformat(),
                  command=" ".join(["python -m benchmarks.end_to_end"] + sys.argv[1:]),
                  platform=common.platform_info(), splits=dict(tune=config.data.tune_split,
                                                                  eval=config.data.eval_split),
                  config=json.loads(config.to_json()), torch_steps=torch_steps,
                  timed=dict(explain_s="explaining: reading the images, optimising, maps, writing batch files "
                             "(ours includes its XLA compilation)", whole_s="the whole procedure, model loading, "
                             "scoring and report included"),
                  table=table(rows, config.protocol.strategies), results=rows)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    return result


def define_flags():
    """The command line's flags, defined only when run as a program."""
    flags.DEFINE_string("workdir", None, "new or empty directory; the two procedures write into jax/ and torch/")
    flags.DEFINE_string("out", None, "JSON file of the platform, timings and summaries")
    flags.DEFINE_integer("num_tune", 200, "first images of the guided config's tuning split", lower_bound=1)
    flags.DEFINE_integer("num_eval", 500, "first images of the guided config's evaluation split", lower_bound=1)
    flags.DEFINE_integer("torch_steps", 100, "max_iter of the authors' L-BFGS step", lower_bound=1)
    flags.DEFINE_integer("jax_steps", None, "max_steps of our job (default: the guided config's 30)", lower_bound=1)
    flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint at INFO.
    args = dict(workdir=FLAGS.workdir, out=FLAGS.out, num_tune=FLAGS.num_tune, num_eval=FLAGS.num_eval,
                torch_steps=FLAGS.torch_steps, jax_steps=FLAGS.jax_steps)
    try:
        result = run(**args)
    except (UsageError, ConfigError, CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    print(result["table"])
    print(f"wrote {args['out']}")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
