"""Training metrics at the edges: TensorBoard event files, a line on stdout, ``metrics.jsonl``, ``learning_curves.png``.

Only the active process (process 0) writes. A resumed run first drops the records past the step it resumed from,
so the file holds one trajectory.
"""

import json
import os

import numpy as np
from tqdm import tqdm

CURVES = (("corruption_loss", "classifier_loss"), ("accuracy_corrupted", "accuracy_clean"), ("occluded_area",),
          ("lambda_reg",), ("images_per_second",))


class MetricsWriter:
    def __init__(self, workdir: str, start_step: int, active: bool = True, curves: tuple = CURVES):
        """``curves``: the panels of ``learning_curves.png`` (groups of record keys; default: the ALN's)."""
        self.active = active
        self.curves = curves
        self.jsonl = os.path.join(workdir, "metrics.jsonl")
        self.png = os.path.join(workdir, "learning_curves.png")
        if not active:
            return
        kept = [r for r in read_records(self.jsonl) if r["step"] <= start_step]
        with open(self.jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        import tensorflow as tf  # noqa: PLC0415 - only the writing process needs TensorFlow's summary writer.

        self._tf = tf
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, record: dict) -> None:
        if not self.active:
            return
        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items()))
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **record}) + "\n")
        with self._tb.as_default(step=step):
            for k, v in record.items():
                self._tf.summary.scalar(k, v)
        self._tb.flush()

    def close(self) -> None:
        if self.active:
            self._tb.close()
            plot_curves(read_records(self.jsonl), self.png, self.curves)


def read_records(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(records: list[dict], path: str, curves: tuple = CURVES) -> None:
    """One panel per group of ``curves`` against the step."""
    if not records:
        return
    import matplotlib  # noqa: PLC0415 - plotting is an edge concern, loaded when a figure is written.

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    steps = [r["step"] for r in records]
    for ax, keys in zip(axes[0], curves):
        for k in keys:
            ax.plot(steps, [r.get(k, np.nan) for r in records], label=k)  # older records may lack a key
        ax.set_xlabel("step")
        ax.set_yscale("log" if keys == ("lambda_reg",) else "linear")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
