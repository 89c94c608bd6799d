"""Our jitted explainer against the PyTorch reference (the authors' ``LBFGS.step``) at equal steps: per-step cost
(between two step counts) next to the bare forward+input-gradient pass, compile time, peak memory, and on the JAX
side XLA's FLOPs per step and the TFLOP/s (and model FLOP utilisation) they give. Each (implementation, model,
batch size) runs in its own subprocess. How it measures, and the figures: BENCHMARKS.md.

    python -m benchmarks.explainer_vs_torch --batch_sizes_embedded=1,32 --batch_sizes_full=1 --out=/tmp/bench.json
"""

import contextlib
import ctypes
import datetime
import gc
import json
import os
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

from benchmarks import common
from benchmarks.common import FLAGS, MODELS, build_weights, default_steps_lo, images, settings, timed
from perturb_jax.methods.perceptual_ball import objective, perturb
from perturb_jax.runtime import convert_weights

IMPLEMENTATIONS = ("jax", "torch")


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


class PeakMemory:
    """Peak memory of the work between construction and ``peak_mb``: host RSS on the CPU, allocator peak on GPU.

    On the CPU, once the model, inputs and compiled program are ready, the process returns free heap to the OS
    (``malloc_trim``), resets its peak RSS (5 to ``/proc/self/clear_refs``) and reads ``VmRSS``; ``peak_mb`` reads
    ``VmHWM``: the difference is activations, L-BFGS history and outputs, not weights or compiler. On a GPU: the
    allocator's peak minus its use before (``memory_stats`` for JAX, which also counts XLA's autotuning scratch;
    ``max_memory_allocated`` for torch).
    """

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
    """XLA's own plan: arguments, outputs and temporaries of the compiled program."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return total / 2**20


def _marginal(times, steps, times_lo, steps_lo, bare_times) -> dict:
    """Per-step cost from two step counts (fastest calls), the work done once per call, and the bare pass."""
    if steps == steps_lo:
        return dict(bare_ms=1e3 * min(bare_times))
    per_step = (min(times) - min(times_lo)) / (steps - steps_lo)
    return dict(steps_lo=steps_lo, call_s_lo=min(times_lo), marginal_ms_per_step=1e3 * per_step,
                once_ms=1e3 * (min(times_lo) - steps_lo * per_step), bare_ms=1e3 * min(bare_times),
                step_over_bare=per_step / min(bare_times))


def _summary(model_name, weights, batch_size, steps, steps_taken, times, peak_mb, memory_method) -> dict:
    call_s = float(np.mean(times))
    return dict(model=model_name, weights=weights, batch_size=batch_size, steps_requested=steps,
                steps=steps_taken, call_s=call_s, call_s_min=min(times), call_s_all=times,
                ms_per_step=1e3 * call_s / max(steps_taken, 1), images_per_s=batch_size / call_s, peak_mb=peak_mb,
                memory_method=memory_method)


def measure_jax(model_name: str, batch_size: int, steps: int, repeats: int, dtype: str = "float32",
                steps_lo: int | None = None) -> dict:
    """Compiles (timed apart) and times ``perturb.make_explain_fn`` on one batch, at ``steps`` and ``steps_lo``,
    and the bare pass; ``dtype`` casts weights and images."""
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
    bare = jax.jit(common.bare_pass_jax(graphdef, s.relu_layers)).lower(state, x).compile()

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


def measure_torch(model_name: str, batch_size: int, steps: int, repeats: int, steps_lo: int | None = None) -> dict:
    """Times ``torch_reference.perceptual_ball`` on one batch (weights frozen, every core), on CUDA when available."""
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
    taken = common.torch_iterations(steps, evaluations[steps])
    return dict(impl="torch", device=name, dtype="float32", threads=torch.get_num_threads(),
                **_summary(model_name, weights, batch_size, steps, taken, times, peak_mb, memory.method),
                **_marginal(times, taken, times_lo, common.torch_iterations(steps_lo, evaluations[steps_lo]),
                            bare_times))


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


def _define_flags() -> None:
    """The command line's flags, defined only when run as a program (importing this module defines none)."""
    common.define_plan_flags()
    flags.DEFINE_bool("torch", None, "also time the torch reference; default: when torch is importable")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "JAX weights and images (bfloat16: for GPUs)")
    flags.DEFINE_float("peak_tflops", None, "device peak TFLOP/s for the model FLOP utilisation (H100 SXM dense: "
                       "989 bf16, 67 fp32)")
    flags.DEFINE_string("worker", None, "internal: IMPL:MODEL:BATCH measured in this process, JSON written to --out")


def _run_worker(impl: str, model_name: str, batch_size: int, steps: int, repeats: int) -> dict:
    """``measure`` in a fresh subprocess of this script (for a clean peak memory); errors become a record."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "benchmarks.explainer_vs_torch", f"--worker={impl}:{model_name}:{batch_size}",
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
    common.check_args(argv)
    if FLAGS.worker:
        impl, model_name, batch = FLAGS.worker.split(":")
        result = measure(impl, model_name, int(batch), FLAGS.steps, FLAGS.repeats, FLAGS.dtype, FLAGS.peak_tflops)
        with open(FLAGS.out, "w") as f:
            json.dump(result, f)
        return
    use_torch = common.HAS_TORCH if FLAGS.torch is None else FLAGS.torch
    if use_torch and not common.HAS_TORCH:
        raise app.UsageError("--torch needs torch: pip install -e .[torch]")
    info = common.platform_info()
    print("platform: " + json.dumps(info), flush=True)
    if FLAGS.platform:
        return
    rows = []
    for model_name in FLAGS.models:
        batch_sizes, steps, repeats = common.plan()[model_name]
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
        record = dict(date=datetime.date.today().isoformat(),
                      command=" ".join(["python -m benchmarks.explainer_vs_torch"] + sys.argv[1:]),
                      platform=info, results=rows)
        with open(FLAGS.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # Workers share the GPU with this process.
    _define_flags()
    app.run(main)
