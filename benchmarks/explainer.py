r"""Speed and memory of the perceptual-ball optimisation: our jitted JAX explainer against the PyTorch reference.

    python -m benchmarks.explainer --batch_sizes_embedded=1,32 --batch_sizes_full=1 --out=/tmp/bench.json
    python -m benchmarks.explainer --profile --batch_sizes_embedded=1,32 --batch_sizes_full=1

What is timed, at equal steps (both L-BFGS tolerances 0, so each side runs a fixed number of iterations), at two
step counts (``--steps`` and ``default_steps_lo``): the per-step cost is the difference of the fastest calls divided
by the difference of the iterations taken, so the work done once per call (reported apart) does not dilute it; and
the bare pass of the same model on the same batch (``bare_pass_jax``, torch's alike: the forward pass with the
perceptual taps and its input gradient), the floor of a step. ``--profile`` splits our step into its parts instead
(``profile``).

* ours: ``perturb.make_explain_fn`` with the guided config's settings (``configs/guided.py``: ReLU layers 2-13,
  lam' = 1e4, lam = 1, history 100), the whole explanation of a batch: reference forward pass, input gradient
  (for the guided map), the per-image L-BFGS, the final margin and the smoothed maps. Compile time
  (``lower`` + ``compile``) is reported apart; the compiled call is timed after one warm-up, averaged over
  ``--repeats``.
* torch: ``torch_reference.perceptual_ball`` (the authors' one ``LBFGS.step``), same layers, lambdas and history,
  weights frozen (``requires_grad_(False)``; only the input gets a gradient), ``torch.set_num_threads(cores)``.
  It does less than ours: no input gradient, final margin or maps, so at few steps the ratio is conservative.

The speed ratio is torch's per-step cost over ours (fastest calls, which suffer less from other processes on a
shared CPU: torch's OpenMP threads stall when a core is taken).

torch's batched L-BFGS shares one curvature history and step scaling across the batch, ours keeps one per image;
at equal steps both do the same forward and backward pass per step on the whole batch (the per-image two-loop
recursion adds vector work of order history x pixels). torch's ``max_eval`` defaults to ``max_iter * 5 // 4``, so
``--steps`` of 2 or 3 run one iteration fewer on both sides; ms per step divides a call by the iterations actually
taken, which the table shows (JAX/torch). torch skips the evaluation after its last iteration, ours does not.

Both sides have identical weights: the torch model is built (torchvision initialisation, seed 0) and converted with
``convert_weights``; the embedded model loads the shipped checkpoint instead when it exists (``weights`` says which).
Inputs are standard-normal images (already normalised), the target the predicted class.

Memory: each (implementation, model, batch size) runs in a fresh subprocess of this script. On the CPU, after the
model, inputs and compiled program are ready, the process returns free heap to the OS (``malloc_trim``), resets its
peak RSS (writing 5 to ``/proc/self/clear_refs``) and reads ``VmRSS``; after the warm-up and timed calls it reads
``VmHWM``; the peak is the difference (activations, L-BFGS history, outputs; not weights or compiler). On a GPU it
is the device allocator's peak minus its use before the calls (``memory_stats`` for JAX, which also counts XLA's
autotuning scratch; ``max_memory_allocated`` for torch). ``planned_mb`` is XLA's own plan (arguments, outputs and
temporaries of the compiled program).

On a GPU, JAX runs there (``--dtype=bfloat16`` casts weights and images) and torch on CUDA when available (float32;
torch's default allows TF32 convolutions, as XLA's default precision does). FLOPs of one forward and
backward-to-input pass of the batch come from XLA's ``cost_analysis``; divided by ms per step they give the achieved
TFLOP/s, and with ``--peak_tflops`` the model FLOP utilisation (H100 SXM dense: ~989 TFLOP/s bf16, ~67 fp32).
"""

import contextlib
import ctypes
import datetime
import gc
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from perturb_jax.runtime import checkpoint, convert_weights
from perturb_jax.explain import config
from perturb_jax.methods.perceptual_ball import lbfgs, objective, perturb
from perturb_jax.runtime.vgg import NUM_RELUS, RELU_TO_TORCH_INDEX, VGG19BN

HAS_TORCH = importlib.util.find_spec("torch") is not None

IMPLEMENTATIONS = ("jax", "torch")
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
    """(torch model or None without torch, our nested weight dict, description), holding the same weights."""
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


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


class PeakMemory:
    """Peak memory of the work between construction and ``peak_mb``: host RSS on the CPU, allocator peak on GPU."""

    def __init__(self, kind: str, device=None):
        self.kind, self.device = kind, device
        gc.collect()
        if kind == "cuda":
            import torch  # noqa: PLC0415 - optional dependency.

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base, self.method = torch.cuda.memory_allocated(), "torch.cuda.max_memory_allocated - before"
        elif kind == "device":
            self.base = device.memory_stats()["bytes_in_use"]
            self.method = "device memory_stats peak_bytes_in_use - bytes_in_use before"
        else:
            with contextlib.suppress(OSError, AttributeError):  # without glibc there is nothing to trim
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.method = "VmHWM - VmRSS before (peak reset via /proc/self/clear_refs)"
            except OSError:
                self.method = "VmHWM - VmRSS before (peak not resettable: may include earlier peaks)"
            self.base = _proc_status_kb("VmRSS") * 1024

    def peak_mb(self) -> float:
        if self.kind == "cuda":
            import torch  # noqa: PLC0415 - optional dependency.

            peak = torch.cuda.max_memory_allocated()
        elif self.kind == "device":
            peak = self.device.memory_stats()["peak_bytes_in_use"]
        else:
            peak = _proc_status_kb("VmHWM") * 1024
        return (peak - self.base) / 2**20


def timed(call, sync, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls after one warm-up call."""
    sync(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - start)
    return times


def step_flops(graphdef, state, images_: jax.Array, s: perturb.Settings) -> float | None:
    """XLA's FLOP count of one forward and backward-to-input pass of the loss over the batch (None if unknown)."""

    def loss_and_grad(state, x_adv, x, ref, target):
        def total(z):
            logits, acts = nnx.merge(graphdef, state)(z, s.relu_layers)
            per_image = jax.vmap(lambda lg, a, r, za, xa, t: objective.perceptual_ball_loss(
                lg, a, r, za, xa, t, lam_perceptual=s.lam_perceptual, lam_pixel=s.lam_pixel,
                target_margin=s.target_margin, reduction=s.reduction))
            return per_image(logits, acts, ref, z, x, target).sum()

        return jax.value_and_grad(total)(x_adv)

    _, ref = jax.eval_shape(lambda st, x: nnx.merge(graphdef, st)(x, s.relu_layers), state, images_)
    target = jax.ShapeDtypeStruct(images_.shape[:1], jnp.int32)
    cost = jax.jit(loss_and_grad).lower(state, images_, images_, ref, target).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _planned_mb(compiled) -> float | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return total / 2**20


def bare_pass_jax(graphdef, relu_layers):
    """``f(state, x)``: one forward pass with the perceptual taps and its gradient with respect to the input, the
    least a step of the explainer must do (the floor of its per-step cost)."""

    def f(state, x):
        def total(z):
            logits, acts = nnx.merge(graphdef, state)(z, relu_layers)
            return logits[:, 0].sum() + sum(a.sum() for a in acts.values())

        return jax.grad(total)(x)

    return f


def _marginal(times, steps, times_lo, steps_lo, bare_times) -> dict:
    """Per-step cost from two step counts (fastest calls), the work done once per call, and the bare pass."""
    if steps == steps_lo:
        return dict(bare_ms=1e3 * min(bare_times))
    per_step = (min(times) - min(times_lo)) / (steps - steps_lo)
    return dict(steps_lo=steps_lo, call_s_lo=min(times_lo), marginal_ms_per_step=1e3 * per_step,
                once_ms=1e3 * (min(times_lo) - steps_lo * per_step), bare_ms=1e3 * min(bare_times),
                step_over_bare=per_step / min(bare_times))


def measure_jax(model_name: str, batch_size: int, steps: int, repeats: int, dtype: str = "float32",
                steps_lo: int | None = None) -> dict:
    """Compiles and times our explainer on one batch; see the module docstring for what is measured."""
    tmodel, pure, weights = build_weights(model_name)
    del tmodel
    num_classes, width_divisor, size = MODELS[model_name]
    graphdef, state = nnx.split(convert_weights.build_model(pure, num_classes, width_divisor))
    del pure
    dt = jnp.dtype(dtype)
    device = jax.devices()[0]
    state = jax.device_put(
        jax.tree.map(lambda v: v.astype(dt) if jnp.issubdtype(v.dtype, jnp.floating) else v, state), device)
    x = jax.device_put(jnp.asarray(images(batch_size, size), dt), device)
    labels = jax.device_put(jnp.zeros((batch_size,), jnp.int32), device)
    s = settings(steps)
    steps_lo = default_steps_lo(steps) if steps_lo is None else steps_lo

    start = time.perf_counter()
    lowered = perturb.make_explain_fn(graphdef, s).lower(state, x, labels)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    compiled_lo = perturb.make_explain_fn(graphdef, settings(steps_lo)).lower(state, x, labels).compile()
    bare = jax.jit(bare_pass_jax(graphdef, s.relu_layers)).lower(state, x).compile()

    memory = PeakMemory("host" if device.platform == "cpu" else "device", device)
    out, out_lo = {}, {}

    def call():
        out.update(compiled(state, x, labels))
        return out

    def call_lo():
        out_lo.update(compiled_lo(state, x, labels))
        return out_lo

    times = timed(call, jax.block_until_ready, repeats)
    peak_mb = memory.peak_mb()
    times_lo = timed(call_lo, jax.block_until_ready, repeats)
    bare_times = timed(lambda: bare(state, x), jax.block_until_ready, max(repeats, 5))
    return dict(impl="jax", device=f"{device.platform}: {device.device_kind}", dtype=dtype,
                trace_lower_s=lowered_at - start, compile_s=compile_s, planned_mb=_planned_mb(compiled),
                flops_per_step=step_flops(graphdef, state, x, s), failed=int(np.sum(out["failed"])),
                **_summary(model_name, weights, batch_size, steps, int(np.max(out["steps"])), times, peak_mb,
                           memory.method),
                **_marginal(times, int(np.max(out["steps"])), times_lo, int(np.max(out_lo["steps"])), bare_times))


def profile(model_name: str, batch_size: int, steps: int, repeats: int = 5) -> dict:
    """Where one explainer step goes (ms, fastest of ``repeats`` calls, each part jitted apart on the same batch).

    ``forward``: the taps' forward pass; ``bare``: it and its input gradient; ``objective``: value and input gradient
    of Eq. (4), vmapped per image as inside the loop (margin and perceptual terms added to the bare pass);
    ``lbfgs``: the L-BFGS update and loop alone, per step, on a cheap function (softplus) of the same size and
    history; ``step``: the explainer's marginal step; ``once``: the explainer's work done once per call (reference
    pass, guided gradient, final pass, maps).
    """
    _, pure, _ = build_weights(model_name)
    num_classes, width_divisor, size = MODELS[model_name]
    graphdef, state = nnx.split(convert_weights.build_model(pure, num_classes, width_divisor))
    x = jnp.asarray(images(batch_size, size))
    labels = jnp.zeros((batch_size,), jnp.int32)
    s = settings(steps)

    def ms(fn, *args):
        compiled = jax.jit(fn).lower(*args).compile()
        return 1e3 * min(timed(lambda: compiled(*args), jax.block_until_ready, repeats))

    def objective_grad(state, x, x_adv, target):
        model = nnx.merge(graphdef, state)
        grad_kernels = model.input_grad_kernels()
        _, ref = jax.lax.stop_gradient(model(x, s.relu_layers))

        def one(z, x1, r, t):
            def value(z):
                logits, acts = model(z[None], s.relu_layers, grad_kernels=grad_kernels)
                return objective.perceptual_ball_loss(
                    logits[0], {k: a[0] for k, a in acts.items()}, r, z, x1, t, lam_perceptual=s.lam_perceptual,
                    lam_pixel=s.lam_pixel, target_margin=s.target_margin, reduction=s.reduction)
            return jax.value_and_grad(value)(z)

        return jax.vmap(one)(x_adv, x, ref, target)

    def lbfgs_only(k):
        def run(x):
            value_and_grad = jax.value_and_grad(lambda z: jnp.sum(jax.nn.softplus(z)))  # never converges
            return jax.vmap(lambda x0: lbfgs.minimize(value_and_grad, x0, max_iter=k, history_size=steps,
                                                      tolerance_grad=0.0, tolerance_change=0.0, axis_name="batch"),
                            axis_name="batch")(x.reshape(len(x), -1)).x
        return run

    steps_lo = default_steps_lo(steps)
    fwd = ms(lambda st, x: nnx.merge(graphdef, st)(x, s.relu_layers), state, x)
    with_ref = ms(objective_grad, state, x, x + 0.01, labels)
    lbfgs_step = (ms(lbfgs_only(steps), x) - ms(lbfgs_only(steps_lo), x)) / (steps - steps_lo)
    explain = {k: ms(perturb.make_explain_fn(graphdef, settings(k)), state, x, labels) for k in (steps_lo, steps)}
    step = (explain[steps] - explain[steps_lo]) / (steps - steps_lo)
    return dict(model=model_name, batch_size=batch_size, steps=steps, forward=fwd,
                bare=ms(bare_pass_jax(graphdef, s.relu_layers), state, x), objective=with_ref - fwd,
                lbfgs=lbfgs_step, step=step, once=explain[steps_lo] - steps_lo * step)


def profile_table(rows: list[dict]) -> str:
    """Markdown: each part in ms and as a share of the explainer's marginal step."""
    parts = ("forward", "bare", "objective", "lbfgs", "step", "once")
    lines = ["| model | batch | " + " | ".join(f"{p} ms (share of step)" for p in parts) + " |",
             "|---|---:|" + "---:|" * len(parts)]
    for r in rows:
        cells = [f"{r[p]:.1f} ({r[p] / r['step']:.2f})" if p != "once" else f"{r[p]:.0f}" for p in parts]
        lines.append(f"| {r['model']} | {r['batch_size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def default_steps_lo(steps: int) -> int:
    """The lower of the two step counts that the per-step cost is taken between: at least 4, the fewest that torch's
    ``max_eval`` (``max_iter * 5 // 4``) lets run to the end (see ``torch_iterations``)."""
    return max(4, steps // 3)


def measure_torch(model_name: str, batch_size: int, steps: int, repeats: int, steps_lo: int | None = None) -> dict:
    """Times ``torch_reference.perceptual_ball`` on one batch, on CUDA when available."""
    import torch  # noqa: PLC0415 - optional dependency.

    from benchmarks.references import torch_reference  # noqa: PLC0415 - needs torch.

    torch.set_num_threads(os.cpu_count())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmodel, _, weights = build_weights(model_name)
    tmodel = tmodel.to(device).eval().requires_grad_(False)
    x = torch.from_numpy(images(batch_size, MODELS[model_name][2]).transpose(0, 3, 1, 2).copy()).to(device)
    s = settings(steps)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    steps_lo = default_steps_lo(steps) if steps_lo is None else steps_lo
    evaluations = {}

    def call(max_iter):
        _, n = torch_reference.perceptual_ball(
            tmodel, x, relu_layers=s.relu_layers, lam_perceptual=s.lam_perceptual, lam_pixel=s.lam_pixel,
            value=s.target_margin, max_iter=max_iter, history_size=s.history_size, tolerance_grad=0.0,
            tolerance_change=0.0)
        evaluations[max_iter] = n

    def bare():
        z = x.clone().requires_grad_(True)
        logits, acts = torch_reference.forward_with_relus(tmodel, z, s.relu_layers)
        (logits[:, 0].sum() + sum(a.sum() for a in acts.values())).backward()
        return z.grad

    memory = PeakMemory("cuda" if device.type == "cuda" else "host")
    times = timed(lambda: call(steps), lambda _: sync(), repeats)
    peak_mb = memory.peak_mb()
    times_lo = timed(lambda: call(steps_lo), lambda _: sync(), repeats)
    bare_times = timed(bare, lambda _: sync(), max(repeats, 5))
    name = f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"
    taken = torch_iterations(steps, evaluations[steps])
    return dict(impl="torch", device=name, dtype="float32", threads=torch.get_num_threads(),
                **_summary(model_name, weights, batch_size, steps, taken, times, peak_mb, memory.method),
                **_marginal(times, taken, times_lo, torch_iterations(steps_lo, evaluations[steps_lo]), bare_times))


def torch_iterations(max_iter: int, evaluations: int) -> int:
    """Updates of x' in torch's L-BFGS step (tolerances 0) from its closure evaluations.

    One evaluation precedes the iterations and each iteration evaluates once after its update, except iteration
    ``max_iter``, which ends the step; an earlier one ends it when the evaluations reach ``max_iter * 5 // 4``.
    """
    reaches_max_iter = max_iter == 1 or max_iter < max_iter * 5 // 4
    return max_iter if reaches_max_iter and evaluations == max_iter else evaluations - 1


def _summary(model_name, weights, batch_size, steps, steps_taken, times, peak_mb, memory_method) -> dict:
    call_s = float(np.mean(times))
    return dict(model=model_name, weights=weights, batch_size=batch_size, steps_requested=steps,
                steps=steps_taken, call_s=call_s, call_s_min=min(times), call_s_all=times,
                ms_per_step=1e3 * call_s / max(steps_taken, 1), images_per_s=batch_size / call_s, peak_mb=peak_mb, memory_method=memory_method)


def measure(impl: str, model_name: str, batch_size: int, steps: int, repeats: int = 3, dtype: str = "float32",
            peak_tflops: float | None = None) -> dict:
    """One (implementation, model, batch size) in this process: the JSON record of ``measure_jax``/``_torch``."""
    if impl == "jax":
        r = measure_jax(model_name, batch_size, steps, repeats, dtype)
        if r["flops_per_step"]:
            r["tflops"] = r["flops_per_step"] / (r["ms_per_step"] * 1e-3) / 1e12
            if peak_tflops:
                r["mfu"] = r["tflops"] / peak_tflops
        return r
    if impl == "torch":
        return measure_torch(model_name, batch_size, steps, repeats)
    raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")


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


def _define_flags() -> None:
    """The command line's flags, defined only when run as a program (importing this module defines none)."""
    flags.DEFINE_list("models", list(MODELS), f"models to run, from {list(MODELS)}")
    flags.DEFINE_list("batch_sizes_embedded", ["1", "8", "32"], "batch sizes of the embedded model")
    flags.DEFINE_list("batch_sizes_full", ["1", "4"], "batch sizes of full224")
    flags.DEFINE_integer("steps", 30, "L-BFGS max_iter of the embedded model (iterations taken: see the docstring); "
                         "each configuration also runs default_steps_lo(steps), and the per-step cost is the "
                         "difference")
    flags.DEFINE_integer("full_steps", 12, "L-BFGS max_iter of full224 (~1-3 s per step per image on a small CPU)")
    flags.DEFINE_integer("repeats", 3, "timed calls after one warm-up (embedded)")
    flags.DEFINE_integer("full_repeats", 1, "timed calls after one warm-up (full224)")
    flags.DEFINE_bool("torch", None, "also time the torch reference; default: when torch is importable")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "JAX weights and images (bfloat16: for GPUs)")
    flags.DEFINE_float("peak_tflops", None, "device peak TFLOP/s for the model FLOP utilisation (H100 SXM dense: "
                       "989 bf16, 67 fp32)")
    flags.DEFINE_string("out", None, "JSON file of the platform and every measurement")
    flags.DEFINE_bool("platform", False, "print the platform information and exit")
    flags.DEFINE_bool("profile", False, "instead of the comparison: where one explainer step goes (``profile``), for "
                      "each model and batch size; JAX only")
    flags.DEFINE_string("worker", None, "internal: IMPL:MODEL:BATCH measured in this process, JSON written to --out")


def _run_worker(impl: str, model_name: str, batch_size: int, steps: int, repeats: int) -> dict:
    """``measure`` in a fresh subprocess of this script (for a clean peak memory); errors become a record."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "benchmarks.explainer", f"--worker={impl}:{model_name}:{batch_size}",
               f"--steps={steps}", f"--repeats={repeats}", f"--dtype={FLAGS.dtype}", f"--out={path}"]
        if FLAGS.peak_tflops:
            cmd.append(f"--peak_tflops={FLAGS.peak_tflops}")
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode or not os.path.isfile(path):
            tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            return dict(impl=impl, model=model_name, batch_size=batch_size, error=tail[0])
        with open(path) as f:
            return json.load(f)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    """The markdown table: one row per model and batch size. Per-step costs are marginal (between two step counts,
    fastest calls), next to the bare forward+input-gradient pass of the same model and batch; the speed ratio is
    torch's marginal step over ours."""
    lines = ["| model | batch | steps lo-hi JAX / torch | JAX bare ms | JAX ms/step | JAX step/bare | JAX once ms | "
             "torch bare ms | torch ms/step | torch step/bare | speed ratio JAX/torch per step | JAX compile s | "
             "JAX peak MB | torch peak MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        j, t = row.get("jax", {}), row.get("torch", {})
        steps = " / ".join(f"{r.get('steps_lo', '-')}-{r['steps']}" for r in (j, t) if "steps" in r) or "-"
        errors = "; ".join(f"{k}: {r['error']}" for k, r in (("JAX", j), ("torch", t)) if "error" in r)
        lines.append(
            f"| {row['model']} | {row['batch_size']} | {steps} | {_fmt(j.get('bare_ms'), '.1f')} | "
            f"{_fmt(j.get('marginal_ms_per_step'), '.1f')} | {_fmt(j.get('step_over_bare'), '.2f')} | "
            f"{_fmt(j.get('once_ms'), '.0f')} | {_fmt(t.get('bare_ms'), '.1f')} | "
            f"{_fmt(t.get('marginal_ms_per_step'), '.1f')} | {_fmt(t.get('step_over_bare'), '.2f')} | "
            f"{errors or _fmt(row.get('ratio'), '.2f')} | {_fmt(j.get('compile_s'), '.1f')} | "
            f"{_fmt(j.get('peak_mb'), '.0f')} | {_fmt(t.get('peak_mb'), '.0f')} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.worker:
        impl, model_name, batch = FLAGS.worker.split(":")
        result = measure(impl, model_name, int(batch), FLAGS.steps, FLAGS.repeats, FLAGS.dtype, FLAGS.peak_tflops)
        with open(FLAGS.out, "w") as f:
            json.dump(result, f)
        return
    unknown = sorted(set(FLAGS.models) - set(MODELS))
    if unknown:
        raise app.UsageError(f"--models: unknown {unknown}; known: {list(MODELS)}")
    use_torch = HAS_TORCH if FLAGS.torch is None else FLAGS.torch
    if use_torch and not HAS_TORCH:
        raise app.UsageError("--torch needs torch: pip install -e .[torch]")
    info = platform_info()
    print("platform: " + json.dumps(info), flush=True)
    if FLAGS.platform:
        return
    plan = {"embedded": (FLAGS.batch_sizes_embedded, FLAGS.steps, FLAGS.repeats),
            "full224": (FLAGS.batch_sizes_full, FLAGS.full_steps, FLAGS.full_repeats)}
    if FLAGS.profile:
        rows = [profile(m, int(b), plan[m][1], max(plan[m][2], 3)) for m in FLAGS.models for b in plan[m][0]]
        print(profile_table(rows))
        if FLAGS.out:
            with open(FLAGS.out, "w") as f:
                json.dump(dict(date=datetime.date.today().isoformat(), platform=info, profile=rows), f, indent=2)
        return
    rows = []
    for model_name in FLAGS.models:
        batch_sizes, steps, repeats = plan[model_name]
        for batch in map(int, batch_sizes):
            row = dict(model=model_name, batch_size=batch)
            for impl in IMPLEMENTATIONS if use_torch else ("jax",):
                row[impl] = _run_worker(impl, model_name, batch, steps, repeats)
                print(f"{model_name} batch {batch} {impl}: " + json.dumps(row[impl]), flush=True)
            if "marginal_ms_per_step" in row.get("jax", {}) and "marginal_ms_per_step" in row.get("torch", {}):
                row["ratio"] = row["torch"]["marginal_ms_per_step"] / row["jax"]["marginal_ms_per_step"]
            rows.append(row)
    info["load_average_after"] = os.getloadavg()
    print(table(rows))
    print(f"load average before {info['load_average']}, after {info['load_average_after']}")
    if FLAGS.out:
        record = dict(date=datetime.date.today().isoformat(), command=" ".join(["python -m benchmarks.explainer"]
                                                                                 + sys.argv[1:]),
                      platform=info, results=rows)
        with open(FLAGS.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # Workers share the GPU with this process.
    _define_flags()
    app.run(main)
