r"""Images per second of every method of Table 1 against its reference library (Captum, TorchRay, torchattacks,
the authors' torch L-BFGS for the perceptual ball) on the torch replica holding the same weights, the same images
and settings (``configs/table1.py``), and the largest difference of the maps; ``--network_batches`` also times the
bare network on both sides (``network_rows``). Needs torch and the reference libraries (the test install). How it
measures, and the figures: BENCHMARKS.md.

  python -m benchmarks.methods --batch_size=32 --reference_images=8 --network_batches=8,32,256 \
      --out=/tmp/methods_bench.json
  python -m benchmarks.methods --methods=rise,occlusion --batch_size=32 --reference_images=8
"""

import json
import os
import runpy
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

import eval.datasets
from benchmarks import common as bench_common, end_to_end
from perturb_jax.runtime import checkpoint
from perturb_jax.explain import config as config_lib, job as explain
from perturb_jax import methods
from perturb_jax.methods import common, rise, smoothgrad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCES = {
    "perceptual_ball": "authors' code (torch L-BFGS, one image at a time)",
    "gradient": "Captum Saliency", "guided_backprop": "Captum GuidedBackprop", "grad_cam": "Captum LayerGradCam",
    "guided_grad_cam": "Captum GuidedGradCam", "integrated_gradients": "Captum IntegratedGradients",
    "smoothgrad": "Captum NoiseTunnel(Saliency)", "occlusion": "Captum Occlusion",
    "excitation_backprop": "TorchRay excitation_backprop", "extremal_perturbation": "TorchRay extremal_perturbation",
    "rise": "TorchRay rise", "deepfool": "torchattacks DeepFool",
}


def reference_maps(name: str, torch_model, images: np.ndarray, targets: np.ndarray, settings: dict, key, config):
    """The reference library's maps (B, H, W) of ``images`` (normalised NHWC) at ``settings``; the sampling
    methods get our draws for ``key`` (SmoothGrad's noise, RISE's masks)."""
    import torch  # noqa: PLC0415 - the test install's

    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    t = torch.from_numpy(targets.astype(np.int64))
    if name == "perceptual_ball":  # the authors' procedure, image by image, our map of its x'
        return np.stack([end_to_end.explain_image_torch(torch_model, image, config, settings["max_steps"])[
            "saliency"] for image in images])
    options = {k: v for k, v in settings.items() if k != "chunk_size"}
    if name == "excitation_backprop":
        from benchmarks.references import torchray_excitation  # noqa: PLC0415

        return torchray_excitation.excitation_backprop(torch_model, x, t, **options)
    if name == "extremal_perturbation":
        from benchmarks.references import torchray_extremal  # noqa: PLC0415

        return torchray_extremal.run(torch_model, x, t, **options)["saliency"]
    if name == "rise":
        from benchmarks.references import torchray_rise  # noqa: PLC0415

        given = np.asarray(rise.masks(key, images.shape[1:3], options["num_masks"], options["num_cells"],
                                      options["p"]))
        return torchray_rise.saliency(torch_model, x, t, given, num_cells=options["num_cells"], p=options["p"],
                                      batch_size=settings["chunk_size"])
    if name == "deepfool":
        from benchmarks.references import torchattacks_deepfool  # noqa: PLC0415

        return torchattacks_deepfool.deepfool(torch_model, x, t, mean=options["mean"], std=options["std"],
                                              steps=options["steps"], overshoot=options["overshoot"])[0]
    from benchmarks.references import captum_methods  # noqa: PLC0415

    if name == "smoothgrad":
        noise = np.asarray(smoothgrad.noise(key, jnp.asarray(images), options["samples"], options["noise_level"]))
        return captum_methods.smoothgrad(torch_model, x, t, torch.from_numpy(noise.transpose(0, 1, 4, 2, 3)),
                                         chunk_size=settings["chunk_size"])
    return captum_methods.METHODS[name](torch_model, x, t, **settings)


def _best_of(call, repeats: int) -> float:
    """The least wall time of ``repeats`` calls of ``call`` after an untimed one (``bench_common.timed``)."""
    return min(bench_common.timed(call, jax.block_until_ready, repeats))


def measure(name: str, config, graphdef, state, torch_model, images: np.ndarray, targets: np.ndarray,
            reference_images: int, repeats: int) -> dict:
    """One row: ours and the reference's images per second, compile seconds, and the maps' largest difference."""
    settings = config_lib.method_settings(config, name)
    fn = methods.make_fn(name, graphdef, settings)
    key = jax.random.key(config.seed)
    args = (state, jnp.asarray(images), jnp.asarray(targets), key)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    ours_s = _best_of(lambda: compiled(*args), repeats)
    row = dict(method=name, reference=REFERENCES[name], batch_size=len(images), compile_s=compile_s,
               ours_s=ours_s, ours_images_per_s=len(images) / ours_s)
    if torch_model is None:
        return row
    n = min(reference_images, len(images))
    # The reference twice on the same shapes: untimed (its warm-up, and the maps compared with ours), then timed on
    # the images plus normal noise of sigma 1e-6 (normalised units), whose maps show how far the reference moves
    # on its own when its input moves by float32 rounding: the scale for the last column.
    ref = np.asarray(reference_maps(name, torch_model, images[:n], targets[:n], settings, key, config), np.float32)
    noisy = images[:n] + np.random.default_rng(0).normal(scale=1e-6, size=images[:n].shape).astype(np.float32)
    start = time.perf_counter()
    ref_noisy = np.asarray(reference_maps(name, torch_model, noisy, targets[:n], settings, key, config), np.float32)
    ref_s = time.perf_counter() - start
    # Ours on the reference's images alone (compiled for them, one untimed call, then the best of ``repeats``):
    # the same work as the reference's, and the same draws for the sampling methods, which draw per batch.
    small = (state, jnp.asarray(images[:n]), jnp.asarray(targets[:n]), key)
    compiled_small = fn.lower(*small).compile()
    small_s = _best_of(lambda: compiled_small(*small), repeats)
    ours = np.asarray(compiled_small(*small)["saliency"])
    scale = np.abs(ref).max() or 1.0
    row.update(reference_images=n, reference_s=ref_s, reference_images_per_s=n / ref_s,
               ours_same_images_per_s=n / small_s, speed_ratio=row["ours_images_per_s"] / (n / ref_s),
               speed_ratio_same_images=ref_s / small_s,
               max_relative_difference=float(np.abs(ours - ref).max() / scale),
               reference_noise_difference=float(np.abs(ref_noisy - ref).max() / scale))
    return row


def table(rows: list[dict]) -> str:
    """The markdown table of ``measure``'s rows."""
    head = ["method", "reference", "ours: images/s (batch)", "ours: images/s (reference's images)",
            "reference: images/s (images)", "ours / reference (batch; same images)", "compile s",
            "max rel. diff. of maps", "reference vs itself at x + 1e-6 noise"]
    lines = ["| " + " | ".join(head) + " |", "|---|---" + "|---:" * (len(head) - 2) + "|"]
    for r in rows:
        ref = r.get("reference_images_per_s")
        lines.append(" | ".join([
            f"| {r['method']}", r["reference"], f"{r['ours_images_per_s']:.3g} ({r['batch_size']})",
            "-" if ref is None else f"{r['ours_same_images_per_s']:.3g}",
            "-" if ref is None else f"{ref:.3g} ({r['reference_images']})",
            "-" if ref is None else f"{r['speed_ratio']:.1f}; {r['speed_ratio_same_images']:.1f}",
            f"{r['compile_s']:.1f}", "-" if ref is None else f"{r['max_relative_difference']:.1e}",
            "-" if ref is None else f"{r['reference_noise_difference']:.1e}"]) + " |")
    return "\n".join(lines)


def network_rows(graphdef, state, torch_model, images: np.ndarray, targets: np.ndarray, batch_sizes,
                 repeats: int) -> list[dict]:
    """The network itself, what every method's cost is made of: milliseconds per image of the forward pass and of
    the forward and backward pass to the input (the input gradient of the target logits), ours (jitted) and torch's,
    at each batch size (the images repeated to fill it); the best of ``repeats`` after an untimed call on each side.
    """
    import torch  # noqa: PLC0415 - the test install's

    forward = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x)[0])
    def input_gradient(st, x, t):  # as SmoothGrad and Integrated Gradients take it (XLA:CPU's fast path)
        model = nnx.merge(graphdef, st)
        return common.input_gradient(model, x, t, grad_kernels=model.input_grad_kernels())

    backward = jax.jit(input_gradient)
    rows = []
    for b in batch_sizes:
        reps = -(-b // len(images))
        x = np.concatenate([images] * reps)[:b]
        t = np.concatenate([targets] * reps)[:b]
        xj, tj = jnp.asarray(x), jnp.asarray(t)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        tt = torch.from_numpy(t.astype(np.int64))

        def torch_forward():
            with torch.no_grad():
                return torch_model(xt)

        def torch_backward():
            leaf = xt.clone().requires_grad_(True)
            torch_model(leaf).gather(1, tt[:, None]).sum().backward()
            return leaf.grad

        ms = {}
        for label, call in [("ours_forward", lambda: forward(state, xj)),
                            ("ours_backward", lambda: backward(state, xj, tj)),
                            ("torch_forward", torch_forward), ("torch_backward", torch_backward)]:
            ms[label] = 1e3 * _best_of(call, repeats) / b
        rows.append(dict(batch_size=b, **{f"{k}_ms_per_image": v for k, v in ms.items()}))
    return rows


def network_table(rows: list[dict]) -> str:
    """The markdown table of ``network_rows``."""
    lines = ["| batch | forward ms/image: ours | torch | ours / torch time | forward+backward ms/image: ours | "
             "torch | ours / torch time |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f, t = r["ours_forward_ms_per_image"], r["torch_forward_ms_per_image"]
        fb, tb = r["ours_backward_ms_per_image"], r["torch_backward_ms_per_image"]
        lines.append(f"| {r['batch_size']} | {f:.2f} | {t:.2f} | {f / t:.2f} | {fb:.2f} | {tb:.2f} | {fb / tb:.2f} |")
    return "\n".join(lines)


def _define_flags() -> None:
    """The command line's flags, defined only when run as a program (importing this module defines none)."""
    flags.DEFINE_list("methods", list(methods.NAMES), "methods to time")
    flags.DEFINE_string("variant", "", "configs/table1.py's variant whose settings are used ('' = embedded)")
    flags.DEFINE_integer("batch_size", 32, "images per call of ours")
    flags.DEFINE_integer("reference_images", 8, "images given to the reference library")
    flags.DEFINE_integer("repeats", 2, "timed calls of ours (the best is kept)")
    flags.DEFINE_bool("torch", True, "time the reference libraries (the test install)")
    flags.DEFINE_list("network_batches", [], "batch sizes at which to time the bare network on both sides too")
    flags.DEFINE_string("out", None, "JSON file of the platform and every row")


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    config = runpy.run_path(os.path.join(ROOT, "configs", "table1.py"))["get_config"](f.variant)
    config.batch_size = f.batch_size
    split = f"validation[1000:{1000 + f.batch_size}]"
    examples = list(eval.datasets.load(config.data, split)[0])
    images = explain.normalise(np.stack([ex["image"] for ex in examples]), config)
    model = checkpoint.load_model(config.model.checkpoint)
    graphdef, state = nnx.split(model)
    targets = np.asarray(jnp.argmax(model(jnp.asarray(images))[0], axis=-1), np.int32)  # config.target
    torch_model = None
    if f.torch:
        import torch  # noqa: PLC0415 - the test install's

        torch.set_num_threads(os.cpu_count())
        torch_model = bench_common.build_weights("embedded")[0].eval().requires_grad_(False)
    rows = []
    for name in f.methods:
        rows.append(measure(name, config, graphdef, state, torch_model, images, targets, f.reference_images,
                            f.repeats))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    network = []
    if f.network_batches and torch_model is not None:
        network = network_rows(graphdef, state, torch_model, images, targets, [int(b) for b in f.network_batches],
                               f.repeats)
        print(network_table(network))
    if f.out:
        with open(f.out, "w") as out:
            json.dump(dict(platform=bench_common.platform_info(), split=split, rows=rows, network=network), out,
                      indent=1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
