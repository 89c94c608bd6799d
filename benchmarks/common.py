"""What the explainer's benchmarks share: the models, identical weights on both sides, the inputs, the settings,
timing, torch's iteration count and the platform record; and the flags and plan of the explainer's two commands
(``benchmarks.explainer_vs_torch``, ``benchmarks.explainer_profile``). Nothing to run on its own."""

import importlib.util
import os
import platform
import re
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from perturb_jax.explain import config
from perturb_jax.methods.perceptual_ball import perturb
from perturb_jax.runtime import checkpoint, convert_weights
from perturb_jax.runtime.vgg import NUM_RELUS, RELU_TO_TORCH_INDEX, VGG19BN

HAS_TORCH = importlib.util.find_spec("torch") is not None

MODELS = {  # name: (num_classes, width_divisor, image size)
    "embedded": (10, 8, 64),
    "full224": (1000, 1, 224),
}


def settings(steps: int) -> perturb.Settings:
    """The guided config (``configs/guided.py``) with ``steps`` L-BFGS iterations and both tolerances 0."""
    p = config.get_config().method.perceptual_ball
    p.relu_layers = tuple(range(2, 14))
    p.guided = True
    p.max_steps = steps
    p.tolerance_grad = 0.0
    p.tolerance_change = 0.0
    return perturb.Settings.from_options(p, target="predicted")


def torch_state_dict(pure: dict) -> dict:
    """Inverse of ``convert_weights.convert_state_dict``: our nested dict -> a torchvision ``vgg19_bn`` state_dict."""
    import torch  # noqa: PLC0415 - optional dependency.

    sd = {}
    for k in range(NUM_RELUS):
        conv, bn = RELU_TO_TORCH_INDEX[k + 1] - 2, pure["bns"][k]
        sd[f"features.{conv}.weight"] = np.transpose(pure["convs"][k]["kernel"], (3, 2, 0, 1))
        sd[f"features.{conv}.bias"] = pure["convs"][k]["bias"]
        names = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
        sd.update({f"features.{conv + 1}.{t}": bn[j] for t, j in names.items()})
        sd[f"features.{conv + 1}.num_batches_tracked"] = np.zeros((), np.int64)
    for i, t in enumerate(convert_weights._CLASSIFIER):
        kernel = np.asarray(pure["fc"][i]["kernel"])
        if i == 0:  # NHWC flattening of (7, 7, C) back to torch's (C, 7, 7).
            kernel = kernel.reshape(7, 7, -1, kernel.shape[1]).transpose(2, 0, 1, 3).reshape(kernel.shape)
        sd[f"classifier.{t}.weight"] = kernel.T
        sd[f"classifier.{t}.bias"] = pure["fc"][i]["bias"]
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def build_weights(model_name: str, seed: int = 0):
    """(torch model or None without torch, our nested weight dict, description), holding the same weights: the
    shipped checkpoint for the embedded model where it exists, else the torch model's initialisation converted."""
    num_classes, width_divisor, _ = MODELS[model_name]
    tmodel = None
    if HAS_TORCH:
        import torch  # noqa: PLC0415 - optional dependency.

        from benchmarks.references import torch_reference  # noqa: PLC0415 - needs torch.

        torch.manual_seed(seed)
        tmodel = torch_reference.TorchVGG19BN(num_classes, width_divisor)
    ckpt = config.EMBEDDED_CHECKPOINT
    if model_name == "embedded" and os.path.isfile(os.path.join(ckpt, "model.json")):
        pure = jax.tree.map(np.asarray, checkpoint.model_state(checkpoint.load_model(ckpt)))
        if tmodel is not None:
            tmodel.load_state_dict(torch_state_dict(pure))
        return tmodel, pure, f"trained checkpoint {ckpt}"
    missing = f"; no checkpoint at {ckpt}" if model_name == "embedded" else ""
    if tmodel is None:
        pure = checkpoint.model_state(VGG19BN(num_classes, width_divisor, rngs=nnx.Rngs(seed)))
        return None, pure, f"random (flax initialisation, seed {seed}; no torch){missing}"
    pure, _, _ = convert_weights.convert_state_dict({k: v.numpy() for k, v in tmodel.state_dict().items()})
    return tmodel, pure, f"random (torchvision initialisation, seed {seed}){missing}"


def images(batch_size: int, size: int, seed: int = 0) -> np.ndarray:
    """Standard-normal NHWC float32 images (inputs are already normalised)."""
    return np.random.default_rng(seed).standard_normal((batch_size, size, size, 3)).astype(np.float32)


def timed(call, sync, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls after one warm-up call."""
    sync(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return times


def bare_pass_jax(graphdef, relu_layers):
    """``f(state, x)``: one forward pass with the perceptual taps and its gradient with respect to the input, the
    least a step of the explainer must do (the floor of its per-step cost)."""

    def f(state, x):
        def total(z):
            logits, acts = nnx.merge(graphdef, state)(z, relu_layers)
            return logits[:, 0].sum() + sum(a.sum() for a in acts.values())

        return jax.grad(total)(x)

    return f


def default_steps_lo(steps: int) -> int:
    """The lower of the two step counts that the per-step cost is taken between: at least 4, the fewest that torch's
    ``max_eval`` (``max_iter * 5 // 4``) lets run to the end (see ``torch_iterations``)."""
    return max(4, steps // 3)


def torch_iterations(max_iter: int, evaluations: int) -> int:
    """Updates of x' in torch's L-BFGS step (tolerances 0) from its closure evaluations.

    One evaluation precedes the iterations and each iteration evaluates once after its update, except iteration
    ``max_iter``, which ends the step; an earlier one ends it when the evaluations reach ``max_iter * 5 // 4``.
    """
    reaches_max_iter = max_iter == 1 or max_iter < max_iter * 5 // 4
    return max_iter if reaches_max_iter and evaluations == max_iter else evaluations - 1


def platform_info() -> dict:
    """CPU model, cores, memory, load, library versions and the devices JAX and torch use."""
    with open("/proc/cpuinfo") as f:
        cpu = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
    with open("/proc/meminfo") as f:
        mem_kb = int(re.search(r"^MemTotal:\s+(\d+)", f.read(), re.M).group(1))
    import flax  # noqa: PLC0415 - only for its version.
    import jaxlib  # noqa: PLC0415 - only for its version.

    dev = jax.devices()[0]
    info = dict(cpu=cpu.group(1) if cpu else platform.processor(), cores=os.cpu_count(),
                usable_cores=len(os.sched_getaffinity(0)), memory_gb=round(mem_kb / 2**20, 1),
                python=platform.python_version(), jax=jax.__version__, jaxlib=jaxlib.__version__,
                flax=flax.__version__, jax_device=f"{dev.platform}: {dev.device_kind}", load_average=os.getloadavg())
    if HAS_TORCH:
        import torch  # noqa: PLC0415 - optional dependency.

        info["torch"] = torch.__version__
        info["torch_device"] = f"cuda: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
    return info


FLAGS = flags.FLAGS


def define_plan_flags() -> None:
    """The flags both explainer commands take (models, batch sizes, steps, repeats, output); defined only when one
    runs as a program."""
    flags.DEFINE_list("models", list(MODELS), f"models to run, from {list(MODELS)}")
    flags.DEFINE_list("batch_sizes_embedded", ["1", "8", "32"], "batch sizes of the embedded model")
    flags.DEFINE_list("batch_sizes_full", ["1", "4"], "batch sizes of full224")
    flags.DEFINE_integer("steps", 30, "L-BFGS max_iter of the embedded model (iterations taken: see "
                         "torch_iterations); each configuration also runs default_steps_lo(steps), and the per-step "
                         "cost is the difference")
    flags.DEFINE_integer("full_steps", 12, "L-BFGS max_iter of full224 (~1-3 s per step per image on a small CPU)")
    flags.DEFINE_integer("repeats", 3, "timed calls after one warm-up (embedded)")
    flags.DEFINE_integer("full_repeats", 1, "timed calls after one warm-up (full224)")
    flags.DEFINE_string("out", None, "JSON file of the platform and every measurement")
    flags.DEFINE_bool("platform", False, "print the platform information and exit")


def check_args(argv) -> None:
    """No positional arguments, only known ``--models``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    unknown = sorted(set(FLAGS.models) - set(MODELS))
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; known: {list(MODELS)}")


def plan() -> dict:
    """{model: (batch sizes, steps, repeats)} from the flags."""
    return {"embedded": (FLAGS.batch_sizes_embedded, FLAGS.steps, FLAGS.repeats),
            "full224": (FLAGS.batch_sizes_full, FLAGS.full_steps, FLAGS.full_repeats)}
