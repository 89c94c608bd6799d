"""``python -m eval.collect``: a sweep's workdirs (files as the jobs write them) gathered into runs.csv, table.md and
one plot per swept field; unfinished runs as rows with their status; a folder of neither job as a one-line error."""

import copy
import csv
import json
import os
import runpy
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from eval import collect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PB, GRAD = "perceptual_ball_guided", "gradient"

# The files below copy the layout of real runs: python -m perturb_jax.main --config=configs/guided.py:tiny and
# python -m aln_jax.main --config=configs/aln.py:tiny (config.json, maps/<method>/options.json, results.json).
EXPLAIN_CONFIG = {
    "batch_size": 4,
    "data": {"boxes": "", "builder_config": "tiny", "data_dir": "", "eval_resolution": "model",
             "eval_split": "validation[6:16]", "folder": "", "image_size": 64, "manual_dir": "",
             "name": "clutter_shapes", "order": "file_name", "resize": "squash", "tune_split": "validation[:6]"},
    "model": {"checkpoint": "/x/perturb_jax/assets/clutter_shapes_vgg19bn_w8", "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25]},
    "protocol": {"energy_alphas": [0.0, 0.5], "given_alphas": {"energy": 0.5, "mean": 1.0, "value": 0.5},
                 "largest_component": True, "max_box_acc_interval": 0.01, "mean_alphas": [0.0, 1.0],
                 "strategies": ["value", "mean", "energy"], "value_alphas": [0.0, 0.5]},
    "seed": 0,
    "target": "predicted",
}
PB_OPTIONS = {"guided": True, "history_size": 100, "lam_perceptual": 10000.0, "lam_pixel": 1.0, "learning_rate": 1.0,
              "max_steps": 5, "optimizer": "lbfgs", "reduction": "mean", "relu_layers": list(range(2, 14)),
              "smoothing_sigma": 2.0, "target_margin": -2.0, "tolerance_change": 1e-09, "tolerance_grad": 1e-07}
ALN_CONFIG = {
    "aln": {"bottleneck": 16, "class_conditional": True, "classifier_widths": [8, 8, 16, 16],
            "corruption_widths": [8, 16], "fill": "random", "image_size": 32},
    "batch_size": 8,
    "data": {"builder_config": "tiny", "name": "clutter_shapes", "train_split": "train"},
    "model": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "seed": 0,
    "slic": {"compactness": 10.0, "n_segments": 100},
    "train": {"corruption_learning_rate": 0.0003, "lambda_reg": 1.0, "target_accuracy": 0.2},
}


def _strategies(best: str, error: float, num_tune: int = 6, num_eval: int = 10) -> dict:
    """A method's localisation_error entry: each strategy (the unchosen ones worse by 0.1), and ``best``."""
    entry = {}
    for i, s in enumerate(("value", "mean", "energy")):
        e = error if s == best else min(error + 0.1, 1.0)
        entry[s] = {"alpha": 0.15 * (i + 1), "alpha_index": i + 1, "tune_accuracy": 0.5, "tune_error": 0.5,
                    "eval_accuracy": 1 - e, "eval_error": e, "num_tune": num_tune, "num_eval": num_eval}
    entry["best"] = {"strategy": best, **entry[best]}
    return entry


def _box_acc(mean: float) -> dict:
    return {"best_threshold": {"0.3": 0.24, "0.5": 0.19, "0.7": 0.09},
            "0.3": mean + 0.2, "0.5": mean, "0.7": mean - 0.2,
            "mean": mean}


def explain_summary(pb: tuple, grad: tuple) -> dict:
    """results.json's summary; ``pb``, ``grad``: (best strategy, its error, MaxBoxAcc mean, seconds per image)."""
    return {
        "methods": [PB, GRAD],
        "num_images": {"tune": 6, "tune_scored": 6, "eval": 10, "eval_scored": 10},
        "failed_images": {PB: [], GRAD: []},
        "skipped_images": [],
        "seconds_per_image": {PB: pb[3], GRAD: grad[3]},
        "classifier_accuracy": {"tune": 0.5, "eval": 0.4},
        "perceptual_ball": {"adversarial_success_tune": 0.0, "mean_steps_tune": 5.0},
        "max_box_acc": {PB: _box_acc(pb[2]), GRAD: _box_acc(grad[2])},
        "localisation_error": {PB: _strategies(*pb[:2]), GRAD: _strategies(*grad[:2]),
                               "centred_box": {"fraction": 0.45, "tune_accuracy": 0.3, "tune_error": 0.7,
                                               "eval_accuracy": 0.0, "eval_error": 1.0},
                               "whole_image": {"eval_error": 1.0}},
        "tuned": True,
        "chosen_alpha": {PB: {"value": 0.15, "mean": 1.0, "energy": 0.35}, GRAD: {"value": 0.15, "mean": 1.5,
                                                                                  "energy": 0.35}},
    }


def _write(path, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data, indent=2, sort_keys=True))


def explain_workdir(path, lam: float, relu=tuple(range(2, 14)), summary=None, batches: int = 0,
                    results: str = "") -> str:
    """An explain-job workdir: config.json and each method's options.json (written before any work), ``batches``
    batch files per method, results.json from ``summary`` (or the text ``results``)."""
    _write(f"{path}/config.json", EXPLAIN_CONFIG)
    _write(f"{path}/maps/perceptual_ball/options.json",
           {**PB_OPTIONS, "lam_perceptual": lam, "relu_layers": list(relu)})
    _write(f"{path}/maps/gradient/options.json", {})
    for i in range(batches):
        for folder in ("maps", "maps/perceptual_ball", "maps/gradient"):
            np.savez(f"{path}/{folder}/tune_{i:05d}.npz", image_id=np.array(["validation_00000"]))
    if summary is not None:
        _write(f"{path}/results.json", {"summary": summary, "per_image": []})
    elif results:
        _write(f"{path}/results.json", results)
    return str(path)


def aln_workdir(path, learning_rate: float, summary=None, steps=()) -> str:
    """An ALN workdir: config.json, metrics.jsonl and checkpoints/<step> up to each of ``steps``,
    eval/results.json from ``summary``."""
    config = copy.deepcopy(ALN_CONFIG)
    config["train"]["corruption_learning_rate"] = learning_rate
    _write(f"{path}/config.json", config)
    _write(f"{path}/metrics.jsonl", "".join(json.dumps({"step": s, "corruption_loss": 0.8, "lambda_reg": 1.0}) + "\n"
                                            for s in steps))
    for s in steps:
        _write(f"{path}/checkpoints/{s}/commit_success.txt", "Checkpoint commit was successful")
    if summary is not None:
        _write(f"{path}/eval/results.json", {"summary": summary, "per_image": []})
    return str(path)


def aln_summary(aln: tuple, grad: tuple, ms: float) -> dict:
    """eval/results.json's summary; ``aln``, ``grad``: (best strategy, its error, MaxBoxAcc mean)."""
    return {
        "method": "aln",
        "num_images": {"tune": 8, "tune_scored": 8, "eval": 16, "eval_scored": 16},
        "skipped_images": [],
        "classifier_accuracy": {"tune": {"aln": 0.25, "strong": 0.25}, "eval": {"aln": 0.31, "strong": 0.31}},
        "whole_image": {"eval_accuracy": 0.0, "eval_error": 1.0},
        "max_box_acc": {"aln": _box_acc(aln[2]), "input_gradient": _box_acc(grad[2])},
        "localisation_error": {"aln": _strategies(*aln[:2], 8, 16), "input_gradient": _strategies(*grad[:2], 8, 16),
                               "centred_box": {"fraction": 0.55, "tune_accuracy": 0.375, "tune_error": 0.625,
                                               "eval_accuracy": 0.1875, "eval_error": 0.8125}},
        "chosen_alpha": {"value": 0.0, "mean": 0.0, "energy": 0.0},
        "compare": [],
        "table": [],
        "ms_per_image": ms,
    }


def read_csv(path) -> tuple[list, dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    return reader.fieldnames, {os.path.basename(r["workdir"]): r for r in rows}


def assert_png(path, size=(640, 420)) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        image.verify()


LAM, RELU = "method.perceptual_ball.lam_perceptual", "method.perceptual_ball.relu_layers"
FINISHED = {  # workdir: (lam, relu_layers, perceptual ball (strategy, error, MaxBoxAcc, s), gradient (...))
    "lam_100": (100.0, range(2, 14), ("value", 0.6, 0.5, 0.044971176875151286), ("value", 0.8, 0.4333, 0.0105)),
    "lam_1000": (1000.0, range(2, 14), ("mean", 0.5, 0.5666666666666667, 0.0224), ("mean", 0.7, 0.45, 0.0036)),
    "lam_100000": (100000.0, range(2, 14), ("energy", 0.3, 0.61, 0.0485), ("value", 0.8, 0.4333, 0.0081)),
    "relu_5_10": (1000.0, range(5, 11), ("energy", 0.7, 0.5666666666666667, 0.047), ("value", 0.8, 0.4333, 0.0069)),
}


@pytest.fixture
def explain_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    for name, (lam, relu, pb, grad) in FINISHED.items():
        explain_workdir(sweep / name, lam, relu, explain_summary(pb, grad))
    explain_workdir(sweep / "lam_10000", 10000.0, batches=2)  # partial: batches, no results
    explain_workdir(sweep / "lam_1000000", 1e6)  # failed: the config and options only
    explain_workdir(sweep / "lam_30000", 30000.0, batches=3, results='{"summary": {"methods": [')  # failed: truncated
    (sweep / "lam_100.log").write_text("explaining: 100%\n")  # a file the shell's glob catches too
    return sweep


def test_explain_sweep_fields_numbers_statuses_and_plots(explain_sweep, tmp_path):
    out = tmp_path / "out"
    result = collect.collect([str(p) for p in sorted(explain_sweep.iterdir())], str(out))
    assert result["fields"] == [LAM, RELU]
    assert result["skipped"] == [str(explain_sweep / "lam_100.log")]
    header, rows = read_csv(out / "runs.csv")
    assert header == ["workdir", "status", LAM, RELU,
                      f"{PB} error", f"{PB} strategy", f"{PB} MaxBoxAcc", f"{PB} s/image",
                      f"{GRAD} error", f"{GRAD} strategy", f"{GRAD} MaxBoxAcc", f"{GRAD} s/image", "note"]
    # Rows in the order of the swept values (numbers numerically), runs without results after their peers.
    assert list(rows) == ["lam_100", "lam_1000", "relu_5_10", "lam_10000", "lam_30000", "lam_100000", "lam_1000000"]
    for name, (lam, relu, pb, grad) in FINISHED.items():
        row = rows[name]
        assert row["status"] == "finished" and row["note"] == ""
        assert float(row[LAM]) == lam
        assert row[RELU] == f"({relu[0]}..{relu[-1]})"
        for method, (strategy, error, box_acc, seconds) in ((PB, pb), (GRAD, grad)):
            # Exactly the numbers of results.json: the best strategy's eval_error, not another strategy's.
            with open(explain_sweep / name / "results.json") as f:
                summary = json.load(f)["summary"]
            assert float(row[f"{method} error"]) == summary["localisation_error"][method]["best"]["eval_error"] == error
            assert row[f"{method} strategy"] == strategy
            assert float(row[f"{method} MaxBoxAcc"]) == summary["max_box_acc"][method]["mean"] == box_acc
            assert float(row[f"{method} s/image"]) == summary["seconds_per_image"][method] == seconds
    blank = [f"{m} {c}" for m in (PB, GRAD) for c in ("error", "strategy", "MaxBoxAcc", "s/image")]
    expected = {"lam_10000": ("partial", "no results.json; 6 batch files under maps/"),
                "lam_1000000": ("failed", "no results.json and no work stored")}
    for name, (status, note) in expected.items():
        assert (rows[name]["status"], rows[name]["note"]) == (status, note)
        assert [rows[name][c] for c in blank] == [""] * len(blank)
    assert float(rows["lam_10000"][LAM]) == 10000.0 and rows["lam_10000"][RELU] == "(2..13)"
    assert rows["lam_30000"]["status"] == "failed"
    assert rows["lam_30000"]["note"].startswith("results.json unreadable (JSONDecodeError: ")

    with open(out / "table.md") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("7 runs of python -m perturb_jax.main (4 finished, 1 partial, 2 failed).")
    assert lines[2] == "| " + " | ".join(header) + " |"
    assert lines[3] == "|" + "---|" * 13
    assert lines[4] == (f"| {explain_sweep}/lam_100 | finished | 100 | (2..13) | 0.600 | value | 0.500 | 0.045 | "
                        "0.800 | value | 0.433 | 0.0105 |  |")
    assert len(lines) == 4 + 7

    assert result["plots"] == [str(out / f"error_vs_{LAM}.png"), str(out / f"error_vs_{RELU}.png")]
    for path in result["plots"]:
        assert_png(path)
    assert collect.log_axis([100.0, 1000.0, 100000.0]) and not collect.log_axis([1.0, 10.0, 20.0])
    assert not collect.log_axis([0.0, 100.0])


def test_a_quoted_glob_is_expanded_and_the_output_folder_inside_it_skipped(explain_sweep):
    out = explain_sweep / "collected"
    for _ in range(2):  # the second time, the glob also matches the output folder
        result = collect.collect([str(explain_sweep / "lam_*"), str(explain_sweep / "relu_*")], str(out))
        assert len(result["runs"]) == 7 and result["skipped"] == [str(explain_sweep / "lam_100.log")]
    assert collect.expand([str(explain_sweep / "lam_1000*")]) == [
        str(explain_sweep / n) for n in ("lam_1000", "lam_10000", "lam_100000", "lam_1000000")]
    with pytest.raises(collect.CollectError, match="nothing_.*: nothing matches this pattern"):
        collect.expand([str(explain_sweep / "nothing_*")])


def test_a_sweep_of_the_aln(tmp_path):
    finished = aln_workdir(tmp_path / "lr_3e-4", 3e-4, aln_summary(("value", 0.75, 0.2083), ("mean", 0.5, 0.3333),
                                                                  3.5129277916894353), steps=(2, 4, 6))
    partial = aln_workdir(tmp_path / "lr_1e-2", 1e-2, steps=(2, 4))
    untouched = aln_workdir(tmp_path / "lr_1e-1", 1e-1)
    result = collect.collect([finished, partial, untouched], str(tmp_path / "out"))
    assert result["fields"] == ["train.corruption_learning_rate"]
    header, rows = read_csv(tmp_path / "out" / "runs.csv")
    assert header == ["workdir", "status", "train.corruption_learning_rate", "aln error", "aln strategy",
                      "aln MaxBoxAcc", "aln ms/image", "input_gradient error", "input_gradient strategy",
                      "input_gradient MaxBoxAcc", "note"]
    row = rows["lr_3e-4"]
    assert (row["status"], float(row["train.corruption_learning_rate"])) == ("finished", 3e-4)
    assert (float(row["aln error"]), row["aln strategy"], float(row["aln MaxBoxAcc"])) == (0.75, "value", 0.2083)
    assert float(row["aln ms/image"]) == 3.5129277916894353
    assert (float(row["input_gradient error"]), row["input_gradient strategy"]) == (0.5, "mean")
    assert (rows["lr_1e-2"]["status"], rows["lr_1e-2"]["note"]) == (
        "partial", "no eval/results.json; trained to step 4")
    assert (rows["lr_1e-1"]["status"], rows["lr_1e-1"]["note"]) == ("failed", "no eval/results.json and no work stored")
    # One finished run: one point per method on a log axis (the values span a factor 333).
    assert result["plots"] == [str(tmp_path / "out" / "error_vs_train.corruption_learning_rate.png")]
    assert_png(result["plots"][0])


def test_runs_of_both_jobs_are_refused(tmp_path):
    a = explain_workdir(tmp_path / "a", 100.0)
    b = aln_workdir(tmp_path / "b", 1e-3)
    with pytest.raises(collect.CollectError, match="different jobs .*aln_jax.main: .*/b, .*perturb_jax.main: .*/a"):
        collect.collect([a, b], str(tmp_path / "out"))


def test_a_folder_of_neither_job_is_a_one_line_error(tmp_path):
    good = explain_workdir(tmp_path / "good", 100.0)
    stray = tmp_path / "logs"
    stray.mkdir()
    (stray / "sweep.log").write_text("lam 100\n")
    cmd = [sys.executable, "-m", "eval.collect", good, str(stray), f"--out={tmp_path / 'out'}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: {stray} is no workdir of python -m perturb_jax.main or python -m aln_jax.main: it holds no "
        "config.json"]
    assert not (tmp_path / "out").exists()
    # eval is the bottom layer: collecting imports neither job.
    code = ("import sys, eval.collect; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'perturb_jax', 'aln_jax'}))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120).stdout.strip() == "[]"


def test_a_real_tiny_explain_run_and_its_copy_without_results(tmp_path):
    """The files of a real run (python -m perturb_jax.main --config=configs/guided.py:tiny, a random classifier,
    fewer images), finished, then copied and left partial."""
    from flax import nnx  # noqa: PLC0415 - only this test runs the job.

    from perturb_jax.explain import job
    from perturb_jax.runtime import checkpoint
    from perturb_jax.runtime.vgg import VGG19BN

    checkpoint.save_model(VGG19BN(10, 8, rngs=nnx.Rngs(0)), str(tmp_path / "model"), num_classes=10, width_divisor=8)
    config = runpy.run_path(f"{ROOT}/configs/guided.py")["get_config"]("tiny")
    config.model.checkpoint = str(tmp_path / "model")
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.tune_split, config.data.eval_split = "validation[:4]", "validation[4:8]"
    job.explain_and_evaluate(config, str(tmp_path / "real"))
    shutil.copytree(tmp_path / "real", tmp_path / "copy")
    os.remove(tmp_path / "copy" / "results.json")

    result = collect.collect([str(tmp_path / "real"), str(tmp_path / "copy")], str(tmp_path / "out"))
    assert result["fields"] == [] and result["plots"] == []
    with open(tmp_path / "real" / "results.json") as f:
        summary = json.load(f)["summary"]
    header, rows = read_csv(tmp_path / "out" / "runs.csv")
    assert [h for h in header if h.endswith(" error")] == [f"{m} error" for m in summary["methods"]]
    assert rows["real"]["status"] == "finished"
    for m in summary["methods"]:
        best = summary["localisation_error"][m]["best"]
        assert float(rows["real"][f"{m} error"]) == best["eval_error"]
        assert rows["real"][f"{m} strategy"] == best["strategy"] in ("value", "mean", "energy")
        assert float(rows["real"][f"{m} MaxBoxAcc"]) == summary["max_box_acc"][m]["mean"]
        assert float(rows["real"][f"{m} s/image"]) == summary["seconds_per_image"][m] > 0
    batches = sum(name.endswith(".npz") for _, _, names in os.walk(tmp_path / "copy" / "maps") for name in names)
    assert batches == 2 * (1 + len(summary["methods"]))  # one tune and one eval batch: records and each method's maps
    assert (rows["copy"]["status"], rows["copy"]["note"]) == (
        "partial", f"no results.json; {batches} batch files under maps/")
    # The method options stored beside the maps are config fields too (the explain job's config.json omits them).
    with open(tmp_path / "real" / "maps" / "perceptual_ball" / "options.json") as f:
        options = json.load(f)
    assert options and all(result["runs"][0].fields[f"method.perceptual_ball.{k}"] == v for k, v in options.items())
    # run_config.json holds the whole config, the fields config.json leaves out (they change no result) included.
    fields = result["runs"][0].fields
    assert (fields["num_figures"], fields["chunk_size"], fields["methods"]) == (
        config.num_figures, config.chunk_size, list(config.methods))
