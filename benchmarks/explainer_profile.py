"""Where one step of our jitted explainer goes: the taps' forward pass, the bare forward+input-gradient pass, Eq. (4)'s
terms, the L-BFGS update and loop, the whole step and the work done once per call, each jitted apart, per model and
batch size (JAX only, in this process). The figures: BENCHMARKS.md, "Where a step goes".

    python -m benchmarks.explainer_profile --batch_sizes_embedded=1,32 --batch_sizes_full=1
"""

import datetime
import json
import os

import jax
import jax.numpy as jnp
from absl import app
from flax import nnx

from benchmarks import common
from benchmarks.common import FLAGS, MODELS, build_weights, default_steps_lo, images, settings, timed
from perturb_jax.methods.perceptual_ball import lbfgs, objective, perturb
from perturb_jax.runtime import convert_weights


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
                bare=ms(common.bare_pass_jax(graphdef, s.relu_layers), state, x), objective=with_ref - fwd,
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


def main(argv):
    common.check_args(argv)
    info = common.platform_info()
    print("platform: " + json.dumps(info), flush=True)
    if FLAGS.platform:
        return
    plan = common.plan()
    rows = [profile(m, int(b), plan[m][1], max(plan[m][2], 3)) for m in FLAGS.models for b in plan[m][0]]
    print(profile_table(rows))
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(dict(date=datetime.date.today().isoformat(), platform=info, profile=rows), f, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # GPU: as explainer_vs_torch allocates
    common.define_plan_flags()
    app.run(main)
