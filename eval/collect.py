"""A sweep's workdirs gathered into one table and one plot per swept config field.

  python -m eval.collect /tmp/sweep/lam_* --out=/tmp/sweep/collected
  python -m eval.collect '/tmp/sweep/*' --out=/tmp/sweep/collected    # a quoted glob is expanded here

Each WORKDIR is a run of the explain job (``python -m perturb_jax.main``) or of the ALN (``python -m aln_jax.main``);
the config fields that differ between the runs are found, and OUT gets ``runs.csv``, ``table.md`` (one row per run:
workdir, status, the differing fields, each method's localisation error at its best tuned strategy, MaxBoxAcc, time
per image, a note) and ``error_vs_<field>.png`` per differing field. Unfinished runs are rows with their status;
a folder that is no workdir of either job is a one-line error. See docs/sweeps.md.
"""

import csv
import dataclasses
import glob
import json
import math
import os
import re

from absl import app, flags

STATUSES = ("finished", "partial", "failed")
BASELINES = ("centred_box", "whole_image")  # localisation_error entries that are priors, not methods
JOBS = {"explain": "python -m perturb_jax.main", "aln": "python -m aln_jax.main"}


class CollectError(ValueError):
    """A folder that cannot be collected (no workdir of either job, missing) or a set of runs that cannot be
    compared; the message names the folder."""


@dataclasses.dataclass
class Run:
    """One workdir as read: its flattened config, and per method the best tuned error, its strategy, MaxBoxAcc."""

    workdir: str
    job: str = ""  # "explain", "aln", or "" when the config is unreadable
    status: str = "failed"
    fields: dict = dataclasses.field(default_factory=dict)
    methods: dict = dataclasses.field(default_factory=dict)  # {method: {"error", "strategy", "max_box_acc"}}
    timing: dict = dataclasses.field(default_factory=dict)  # {method: (value, "s" or "ms")} per image
    note: str = ""


# Reading workdirs ----------------------------------------------------------------------------------------------------


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dicts -> {dotted key: leaf}; lists (the config's tuples) stay leaves."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _load_json(path: str):
    with open(path) as f:
        return json.load(f)


def _why(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def read_workdir(workdir: str) -> Run:
    """The run in ``workdir``; ``CollectError`` when the folder holds no ``config.json`` (no workdir of either job).

    Both jobs: ``run_config.json`` (the latest run's whole config) or, from older runs, ``config.json`` (the fields
    that change results). Explain job: ``maps/<method>/options.json`` (read as ``method.<method>.<option>``),
    ``maps/**.npz`` batches while it runs, ``results.json`` when finished. ALN: ``metrics.jsonl`` and
    ``checkpoints/<step>`` while it trains, ``eval/results.json``.
    """
    if not os.path.isdir(workdir):
        raise CollectError(f"{workdir}: no such folder")
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise CollectError(f"{workdir} is no workdir of {JOBS['explain']} or {JOBS['aln']}: it holds no config.json")
    run = Run(workdir=workdir)
    full = os.path.join(workdir, "run_config.json")
    try:
        config = _load_json(full if os.path.isfile(full) else config_path)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        run.note = f"config.json unreadable ({_why(e)})"
        return run
    run.job = "aln" if "aln" in config else "explain"
    run.fields = flatten(config)
    if run.job == "explain":
        for options_path in sorted(glob.glob(os.path.join(workdir, "maps", "*", "options.json"))):
            method = os.path.basename(os.path.dirname(options_path))
            try:
                options = _load_json(options_path)
            except (OSError, ValueError):
                continue
            for key, value in flatten(options).items():
                run.fields.setdefault(f"method.{method}.{key}", value)
    results_name = "results.json" if run.job == "explain" else os.path.join("eval", "results.json")
    results_path = os.path.join(workdir, results_name)
    if os.path.exists(results_path):
        try:
            summary = _load_json(results_path)["summary"]
            _read_summary(run, summary)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            run.methods, run.timing = {}, {}
            run.note = f"{results_name} unreadable ({_why(e)})"
            return run
        run.status = "finished"
        return run
    progress = _explain_progress(workdir) if run.job == "explain" else _aln_progress(workdir, run.fields)
    if progress:
        run.status, run.note = "partial", f"no {results_name}; {progress}"
    else:
        run.note = f"no {results_name} and no work stored"
    return run


def _read_summary(run: Run, summary: dict) -> None:
    """Each method's best tuned localisation error (evaluation split), its strategy, mean MaxBoxAcc, time per image.

    Explain job: ``summary.methods``, ``seconds_per_image[method]``. ALN: the methods of ``max_box_acc`` (``aln``,
    ``input_gradient``) and ``ms_per_image`` (the ALN's networks and the Metric 2 classifier, under ``aln``).
    """
    errors = summary.get("localisation_error") or {}
    box_acc = summary.get("max_box_acc") or {}
    methods = list(summary.get("methods") or [])
    for m in list(box_acc) + list(errors):
        if m not in methods and m not in BASELINES:
            methods.append(m)
    for m in methods:
        best = (errors.get(m) or {}).get("best") or {}  # absent when the run had no tuning images
        run.methods[m] = dict(error=best.get("eval_error"), strategy=best.get("strategy"),
                              max_box_acc=(box_acc.get(m) or {}).get("mean"))
    if run.job == "explain":
        for m, seconds in (summary.get("seconds_per_image") or {}).items():
            run.timing[m] = (seconds, "s")
    elif summary.get("ms_per_image") is not None:
        run.timing[summary.get("method", "aln")] = (summary["ms_per_image"], "ms")
    if not summary.get("tuned", bool(errors)):
        run.note = "no tuning images: no best strategy"


def _explain_progress(workdir: str) -> str:
    batches = glob.glob(os.path.join(workdir, "maps", "**", "*.npz"), recursive=True)
    return f"{len(batches)} batch files under maps/" if batches else ""


def _aln_progress(workdir: str, fields: dict) -> str:
    steps = [int(name) for name in _listdir(os.path.join(workdir, "checkpoints")) if name.isdigit()]
    steps += _logged_steps(os.path.join(workdir, "metrics.jsonl"))
    if not steps:
        return ""
    total = fields.get("num_steps")
    return f"trained to step {max(steps)}" + (f" of {total}" if total else "")


def _logged_steps(path: str) -> list:
    """The steps of a ``metrics.jsonl``; none when it is missing or unreadable (the checkpoints still tell)."""
    try:
        with open(path) as f:
            return [json.loads(line)["step"] for line in f if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _listdir(path: str) -> list:
    try:
        return os.listdir(path)
    except OSError:
        return []


# Workdirs from the command line -------------------------------------------------------------------------------------


def expand(arguments, out: str = "", skipped: list | None = None) -> list:
    """Workdirs in order, without repeats and without ``out``: each argument as it is when it exists, else as a
    glob pattern (a pattern matching nothing is a ``CollectError``). Files (a sweep's logs caught by a glob) are
    left out, and appended to ``skipped``."""
    skip = os.path.abspath(out) if out else None
    found = []
    for arg in arguments:
        if os.path.exists(arg) or not glob.has_magic(arg):
            matches = [arg]
        else:
            matches = sorted(glob.glob(arg))
            if not matches:
                raise CollectError(f"{arg}: nothing matches this pattern")
        for path in matches:
            path = os.path.normpath(path)
            if os.path.isfile(path):
                if skipped is not None:
                    skipped.append(path)
            elif os.path.abspath(path) != skip and path not in found:
                found.append(path)
    return found


# The table -----------------------------------------------------------------------------------------------------------


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True)


def differing_fields(runs) -> list:
    """Dotted config keys with more than one value over the runs with a readable config (runs without the key are
    not counted). A key that mirrors another (same last name, equal wherever both are stored: a field stored in
    config.json and in a method's options.json) is left out; of the two, the one more runs store stays."""
    readable = [r for r in runs if r.job]
    keys = sorted({k for r in readable for k in r.fields})
    differ = [k for k in keys if len({_canonical(r.fields[k]) for r in readable if k in r.fields}) > 1]
    stored = {k: sum(k in r.fields for r in readable) for k in differ}
    kept = []
    for k in sorted(differ, key=lambda k: -stored[k]):
        if not any(k.rsplit(".", 1)[-1] == o.rsplit(".", 1)[-1] and all(
                _canonical(r.fields[k]) == _canonical(r.fields[o]) for r in readable if k in r.fields and o in r.fields)
                for o in kept):
            kept.append(k)
    return sorted(kept)


def show(value) -> str:
    """A config value for a table cell: 1e4 as 10000, a run of consecutive integers as (2..13)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        if len(value) > 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value) and \
                value == list(range(value[0], value[0] + len(value))):
            return f"({value[0]}..{value[-1]})"
        return "(" + ", ".join(show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def method_columns(runs) -> list:
    """[(method, time unit or None)] in order of first appearance."""
    methods = []
    for r in runs:
        for m in list(r.methods) + list(r.timing):
            if m not in methods:
                methods.append(m)
    units = {m: unit for r in runs for m, (_, unit) in r.timing.items()}
    return [(m, units.get(m)) for m in methods]


def columns(fields, methods) -> list:
    """workdir, status, the differing fields, then per method: error, strategy, MaxBoxAcc, time per image; note."""
    out = ["workdir", "status", *fields]
    for m, unit in methods:
        out += [f"{m} error", f"{m} strategy", f"{m} MaxBoxAcc"] + ([f"{m} {unit}/image"] if unit else [])
    return out + ["note"]


def rows(runs, fields, methods) -> list:
    """One list of raw values (numbers as stored, None when absent) per run, in the order of ``columns``."""
    out = []
    for r in runs:
        row = [r.workdir, r.status, *(r.fields.get(k) for k in fields)]
        for m, unit in methods:
            got = r.methods.get(m, {})
            row += [got.get("error"), got.get("strategy"), got.get("max_box_acc")]
            if unit:
                row.append(r.timing.get(m, (None, unit))[0])
        out.append(row + [r.note])
    return out


def _sort_key(run: Run, fields) -> tuple:
    def one(value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, float(value), "")
        return (1, 0.0, _canonical(value)) if value is not None else (2, 0.0, "")
    return (not run.job, *(one(run.fields.get(k)) for k in fields), run.workdir)


def _csv_cell(value):
    if value is None:
        return ""
    if isinstance(value, (list, dict, bool)):
        return show(value)
    return value  # numbers as repr(float): they read back equal to the results files'


def _md_cell(header: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and header.endswith(("error", "MaxBoxAcc")):
        return f"{value:.3f}"
    if isinstance(value, float) and header.endswith("/image"):
        return f"{value:.3g}"
    return show(value).replace("|", "\\|")


def write_table(runs, fields, methods, out: str) -> tuple:
    header = columns(fields, methods)
    body = rows(runs, fields, methods)
    csv_path, md_path = os.path.join(out, "runs.csv"), os.path.join(out, "table.md")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([_csv_cell(v) for v in row] for row in body)
    jobs = sorted({r.job for r in runs if r.job})
    counts = ", ".join(f"{sum(r.status == s for r in runs)} {s}" for s in STATUSES)
    lines = [f"{len(runs)} runs of {' and '.join(JOBS[j] for j in jobs) or 'an unknown job'} ({counts}). "
             "error: localisation error (IoU < 0.5) on the evaluation split at the best strategy, its threshold "
             "tuned on the tuning split; MaxBoxAcc: mean over IoU 0.3/0.5/0.7; time per image as each job "
             "measured it. Swept fields: " + (", ".join(f"`{k}`" for k in fields) or "none") + ".", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(h, v) for h, v in zip(header, row)) + " |" for row in body]
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return csv_path, md_path


# Plots ---------------------------------------------------------------------------------------------------------------


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def log_axis(values) -> bool:
    """Whether positive numbers span more than a factor 20 (plotted on a log axis)."""
    return min(values) > 0 and max(values) / min(values) > 20


def plot_name(field: str) -> str:
    return "error_vs_" + re.sub(r"[^A-Za-z0-9._-]", "_", field) + ".png"


def plot_field(runs, field: str, fields, methods, path: str) -> bool:
    """Error against ``field`` over the finished runs, one line per method (and per value of the other swept
    fields, when several are swept). Numbers on a linear axis, or a log one when they span more than a factor 20;
    other values (tuples, strings, booleans) as labelled categories. False, and no file, without a finished run
    holding both."""
    done = [r for r in runs if r.status == "finished" and field in r.fields]
    points = [(r, m) for r in done for m, _ in methods if r.methods.get(m, {}).get("error") is not None]
    if not points:
        return False
    import matplotlib  # noqa: PLC0415 - plotting is an edge concern, loaded when a figure is written.

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    numeric = all(_is_number(r.fields[field]) for r, _ in points)
    others = [k for k in fields if k != field]
    series = {}
    for r, m in points:
        group = ", ".join(f"{k.rsplit('.', 1)[-1]}={show(r.fields.get(k))}" for k in others)
        series.setdefault((m, group), []).append((r.fields[field], r.methods[m]["error"]))
    # A method's colour; a marker (and dashes) per combination of the other swept fields.
    colour = {m: f"C{i % 10}" for i, (m, _) in enumerate(methods)}
    groups = list(dict.fromkeys(g for _, g in series))
    style = {g: dict(marker="osD^v<>ph*"[i % 10], linestyle="-" if i == 0 else "--") for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if numeric:
        for (m, group), xy in series.items():
            xy.sort(key=lambda p: p[0])
            ax.plot([x for x, _ in xy], [y for _, y in xy], color=colour[m], **style[group],
                    label=m + (f" ({group})" if group else ""))
        if log_axis([r.fields[field] for r, _ in points]):
            ax.set_xscale("log")
    else:
        categories = sorted({_canonical(r.fields[field]) for r, _ in points})
        position = {c: i for i, c in enumerate(categories)}
        width = 0.6 / max(len(series), 1)
        for i, ((m, group), xy) in enumerate(series.items()):
            offset = (i - (len(series) - 1) / 2) * width
            ax.plot([position[_canonical(x)] + offset for x, _ in xy], [y for _, y in xy], color=colour[m],
                    marker=style[group]["marker"], linestyle="none", markersize=8,
                    label=m + (f" ({group})" if group else ""))
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels([show(json.loads(c)) for c in categories], rotation=20 if len(categories) > 3 else 0)
        ax.set_xlim(-0.6, len(categories) - 0.4)
    ax.set_xlabel(field)
    ax.set_ylabel("localisation error (best strategy)")
    ax.set_title(f"error against {field}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# Entry point ---------------------------------------------------------------------------------------------------------


def collect(arguments, out: str) -> dict:
    """Reads the workdirs named by ``arguments`` (paths or glob patterns), writes the table and the plots to
    ``out``; returns {"runs", "fields", "csv", "markdown", "plots"}."""
    skipped = []
    workdirs = expand(arguments, out, skipped)
    if not workdirs:
        raise CollectError("no workdir given: name the sweep's workdirs (or a quoted glob pattern)" +
                           (f"; {', '.join(skipped)} are files" if skipped else ""))
    runs = [read_workdir(w) for w in workdirs]
    jobs = {}
    for r in runs:
        if r.job:
            jobs.setdefault(r.job, r.workdir)
    if len(jobs) > 1:
        raise CollectError("the workdirs hold runs of different jobs (" + ", ".join(
            f"{JOBS[j]}: {w}" for j, w in sorted(jobs.items())) + "); collect each job's sweep on its own")
    fields = differing_fields(runs)
    runs.sort(key=lambda r: _sort_key(r, fields))
    methods = method_columns(runs)
    os.makedirs(out, exist_ok=True)
    csv_path, md_path = write_table(runs, fields, methods, out)
    plots = [os.path.join(out, plot_name(k)) for k in fields]
    plots = [p for k, p in zip(fields, plots) if plot_field(runs, k, fields, methods, p)]
    return dict(runs=runs, fields=fields, csv=csv_path, markdown=md_path, plots=plots, skipped=skipped)


_OUT = flags.DEFINE_string("out", None, "Folder for runs.csv, table.md and error_vs_<field>.png (created).")


def main(argv):
    try:
        result = collect(argv[1:], _OUT.value)
    except CollectError as e:
        raise SystemExit(f"error: {' '.join(str(e).split())}") from None
    with open(result["markdown"]) as f:
        print(f.read(), end="")
    for path in [result["csv"], result["markdown"], *result["plots"]]:
        print(f"wrote {path}")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} files (no workdirs): {', '.join(result['skipped'])}")


if __name__ == "__main__":
    flags.mark_flag_as_required("out")
    app.run(main)
