"""`rlvr plot RUN_DIR [RUN_DIR...]`: learning curves and step-time breakdowns from metrics.jsonl.

Each run directory holds ``metrics.jsonl`` (one JSON object per line: ``step`` and
flat numeric keys such as ``reward``, ``eval/accuracy``, ``eval/pass@k``,
``rollouts``, ``time/<phase>``) and, optionally, ``config.yaml``, from which a run
is labelled ``<algorithm>+<weighting>``.  Several runs are overlaid, one line per
run, so algorithms can be compared.

Figures are drawn on :class:`matplotlib.figure.Figure` objects and written with
the Agg renderer; pyplot and its global backend state are never used, so this
module is safe to import anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import sys
from pathlib import Path

log = logging.getLogger("rlvr.analysis.plots")

METRICS_FILE = "metrics.jsonl"
DECISIONS_FILE = "decisions.jsonl"
CONFIG_FILE = "config.yaml"

# Phases inside time/step, in the order the trainer runs them; time/eval and the oracle's are
# outside time/step, and time/collect is generate + verify + value, so not a phase of its own.
STEP_PHASES = ("generate", "verify", "value", "learn", "sync")
OUTSIDE_STEP = ("oracle", "oracle_gradient", "eval")
NOT_PHASES = ("step", "collect")
_PASS_RE = re.compile(r"eval/pass@(\d+)")

FIGURES = (
    "reward_vs_step.png",
    "heldout_vs_step.png",
    "reward_vs_rollouts.png",
    "heldout_vs_rollouts.png",
    "step_time_breakdown.png",
    "pass_at_k.png",
    "v05_decisions.png",
)


# -- loading -------------------------------------------------------------------


def _number(v) -> float | None:
    """A finite float, or None for anything else (strings, bools, null, NaN, inf)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def load_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl``, sorted by step, one per step.

    When a step appears more than once (the file is appended to after a resume),
    the last record for it wins.  Blank lines are ignored; lines that are not a
    JSON object with an integer ``step`` (e.g. a line cut short by a crash) are
    skipped with a warning.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in run directory {str(run_dir)!r} (looked for {str(path)!r})")
    by_step: dict[int, dict] = {}
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            step = rec.get("step") if isinstance(rec, dict) else None
            if isinstance(step, float) and step.is_integer():
                step = int(step)
            if isinstance(step, bool) or not isinstance(step, int):
                bad += 1
                if bad <= 3:
                    log.warning("%s:%d: skipping a line that is not a metrics record: %.80r", path, lineno, line.strip())
                continue
            by_step[step] = {**rec, "step": step}  # later records replace earlier ones
    if bad > 3:
        log.warning("%s: skipped %d malformed lines in all", path, bad)
    return [by_step[s] for s in sorted(by_step)]


def load_decisions(run_dir: str | Path) -> dict[int, list[dict]]:
    """V0.5's per-prompt decisions (``decisions.jsonl``), grouped by step in step order.

    A step written again after a resume keeps its last writing; lines that are not JSON
    objects with ``step``, ``uid``, ``k`` and ``n`` are skipped with a warning."""
    path = Path(run_dir) / DECISIONS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: decisions are logged by V0.5 runs (algorithm=v05)")
    steps: dict[int, list[dict]] = {}
    last_step = None
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            step = int(d["step"])
            d["k"], d["n"] = int(d["k"]), int(d["n"])
            d["uid"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("%s:%d: not a decision record, skipped", path, line_no)
            continue
        if step in steps and step != last_step:  # the step written again, after a resume
            steps[step].clear()
        # (a uid may come twice within one step: a batch that crosses an epoch of the prompts)
        steps.setdefault(step, []).append(d)
        last_step = step
    return dict(sorted(steps.items()))


def run_label(run_dir: str | Path) -> str:
    """``<algorithm>+<weighting>`` from ``config.yaml`` when readable, else the directory name."""
    run_dir = Path(run_dir)
    name = run_dir.resolve().name or str(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        return name
    try:
        import yaml

        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - any unreadable config just means "use the dir name"
        log.warning("could not read %s (%s); labelling the run %r", cfg_path, e, name)
        return name

    def section_name(key: str) -> str | None:
        sec = cfg.get(key) if isinstance(cfg, dict) else None
        v = sec.get("name") if isinstance(sec, dict) else None
        return str(v) if isinstance(v, (str, int, float)) and str(v) else None

    algo, weighting = section_name("algorithm"), section_name("weighting")
    if algo and weighting:
        return f"{algo}+{weighting}"
    return algo or name


def _unique_labels(run_dirs: list[str]) -> list[str]:
    """Labels for the runs, with the directory added where two runs would share a label."""
    labels = [run_label(d) for d in run_dirs]
    names = [Path(d).resolve().name for d in run_dirs]
    out = []
    for j, lab in enumerate(labels):
        if labels.count(lab) > 1:
            tag = names[j] if names.count(names[j]) == 1 and names[j] != lab else run_dirs[j]
            lab = f"{lab} [{tag}]"
        out.append(lab)
    return out


# -- series ----------------------------------------------------------------------


class _Run:
    def __init__(self, run_dir: str, label: str):
        self.dir = run_dir
        self.label = label
        self.records = load_metrics(run_dir)
        total, self.cum_rollouts = 0.0, []
        for r in self.records:  # step 0 records V0.5's warm-up spend under its own key
            total += sum(_number(r.get(k)) or 0.0 for k in ("rollouts", "warmup/rollouts"))
            self.cum_rollouts.append(total)

    def series(self, key: str, x: str = "step") -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for r, cum in zip(self.records, self.cum_rollouts):
            y = _number(r.get(key))
            if y is not None:
                xs.append(r["step"] if x == "step" else cum)
                ys.append(y)
        return xs, ys

    def mean_phase_seconds(self) -> dict[str, float]:
        """Mean seconds per training step for each phase (records with time/step).

        Phases other than the known ones (time/* keys from the controller) are kept by
        name; "other" is time/step minus the phases inside it; the evaluation's and the
        oracle's (outside time/step) are amortised over all steps.
        """
        steps = [r for r in self.records if _number(r.get("time/step")) is not None]
        if not steps:
            return {}
        n = len(steps)
        mean_of = lambda p: sum(_number(r.get(f"time/{p}")) or 0.0 for r in steps) / n  # noqa: E731
        keys = sorted({k[5:] for r in steps for k in r if k.startswith("time/")} - {*NOT_PHASES, *OUTSIDE_STEP, *STEP_PHASES})
        inside = [p for p in STEP_PHASES if any(f"time/{p}" in r for r in steps)] + keys
        mean = {p: mean_of(p) for p in inside}
        step_mean = sum(_number(r["time/step"]) for r in steps) / n
        mean["other"] = max(0.0, step_mean - sum(mean.values()))
        for p in OUTSIDE_STEP:
            if any(_number(r.get(f"time/{p}")) is not None for r in steps):
                mean[p] = mean_of(p)
        return mean

    def last_pass_at_k(self) -> tuple[int, list[int], list[float]] | None:
        for r in reversed(self.records):
            pts = sorted((int(m.group(1)), _number(v)) for k, v in r.items() if (m := _PASS_RE.fullmatch(k)))
            pts = [(k, v) for k, v in pts if v is not None]
            if pts:
                return r["step"], [k for k, _ in pts], [v for _, v in pts]
        return None


# -- compare -----------------------------------------------------------------------


def run_dir_arguments(paths: list[str]) -> list[str]:
    """The arguments that are not plain files: the glob a sweep's runs are named by
    (multirun/<date>/<time>/*) also names Hydra's multirun.yaml beside them, and it failed the whole
    command. Given only files, they are kept, for the error that names them."""
    files = [p for p in paths if Path(p).is_file()]
    if files and len(files) < len(paths):
        print(f"(left out {len(files)} file(s) that are not run dirs: {', '.join(Path(f).name for f in files[:3])})", file=sys.stderr)
        return [p for p in paths if p not in files]
    return paths


def compare_runs(run_dirs: list[str]) -> list[dict]:
    """One row per run: held-out accuracy before and at the end, the last pass@k, rollouts spent and
    seconds in steps and evaluations (start-up excluded), from each run's metrics.jsonl."""
    rows = []
    for run_dir, label in zip(run_dirs, _unique_labels(run_dirs)):
        run = _Run(run_dir, label)
        acc_steps, acc = run.series("eval/accuracy")
        steps = [r["step"] for r in run.records]
        before = next((_number(r.get("eval/accuracy")) for r in run.records if r["step"] == 0), None)
        last_pass = run.last_pass_at_k()
        final_step = int(acc_steps[-1]) if acc_steps else None
        uids = _eval_uids(Path(run_dir), final_step)
        rows.append({
            "run": label,
            "run_dir": str(run_dir),
            "steps": max(steps, default=0),
            "heldout_before": before,
            "heldout_final": acc[-1] if acc else None,
            "heldout_final_step": final_step,  # the last evaluation's, which need not be the last step's
            "eval_prompts": len(uids) if uids is not None else None,
            "eval_set": hashlib.sha256("\n".join(sorted(uids)).encode()).hexdigest()[:12] if uids else None,
            "pass_at_k_step": last_pass[0] if last_pass else None,
            "pass_at_k": {f"pass@{k}": v for k, v in zip(last_pass[1], last_pass[2])} if last_pass else {},
            "rollouts": run.cum_rollouts[-1] if run.cum_rollouts else 0.0,
            "seconds": sum((_number(r.get("time/step")) or 0.0) + (_number(r.get("time/eval")) or 0.0) for r in run.records),
        })
    return rows


def _eval_uids(run_dir: Path, step: int | None) -> list[str] | None:
    """The held-out prompts evaluated at ``step`` (eval.jsonl), or None when unknown."""
    path = run_dir / "eval.jsonl"
    if step is None or not path.exists():
        return None
    uids = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line a crash cut short
        if record.get("step") == step and "uid" in record:
            uids.append(str(record["uid"]))
    return uids or None


def comparison_warnings(rows: list[dict]) -> list[str]:
    """What makes the rows' accuracies not side by side: final evaluations at different steps, or of
    different held-out prompts (they printed as equals)."""
    out = []
    if len({r["heldout_final_step"] for r in rows if r["heldout_final"] is not None}) > 1:
        out.append("the final held-out accuracies come from different steps: " +
                   ", ".join(f"{r['run']} step {r['heldout_final_step']}" for r in rows if r["heldout_final"] is not None))
    if len({r["eval_set"] for r in rows if r["eval_set"]}) > 1:
        out.append("the runs evaluated different held-out prompts: " +
                   ", ".join(f"{r['run']} {r['eval_prompts']} prompts (set {r['eval_set']})" for r in rows if r["eval_set"]))
    return out


def format_comparison(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare_runs` rows, and what makes them not comparable."""
    ks = sorted({k for r in rows for k in r["pass_at_k"]}, key=lambda k: int(k.split("@")[1]))
    top_k = ks[-1:]  # the largest k; --json has them all

    def cell(v, form: str) -> str:  # by column: 8 rollouts printed "8.000" above a row's "16"
        return "-" if v is None else format(v, form)

    header = ["run", "steps", "held-out before", "held-out final", "at step", "prompts", *top_k, "rollouts", "seconds"]
    table = [header] + [
        [r["run"], cell(r["steps"], ".0f"), cell(r["heldout_before"], ".3f"), cell(r["heldout_final"], ".3f"), cell(r["heldout_final_step"], ".0f"),
         cell(r["eval_prompts"], ".0f"), *[cell(r["pass_at_k"].get(k), ".3f") for k in top_k], cell(r["rollouts"], ".0f"), cell(r["seconds"], ".1f")]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines + [f"note: {w}" for w in comparison_warnings(rows)])


# -- figures -----------------------------------------------------------------------


def _new_axes(title: str, xlabel: str, ylabel: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _finish(ax, empty_note: str) -> None:
    if ax.get_lines() or ax.patches:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center", color="gray")


def _curve_figure(runs: list[_Run], key: str, x: str, title: str, xlabel: str, ylabel: str, marker: str | None):
    fig, ax = _new_axes(title, xlabel, ylabel)
    for i, run in enumerate(runs):
        xs, ys = run.series(key, x)
        if xs:
            ax.plot(xs, ys, marker=marker, markersize=4, linewidth=1.5, color=f"C{i}", label=run.label)
    _finish(ax, f"no {key!r} values in these runs")
    return fig


def _time_figure(runs: list[_Run]):
    from matplotlib.ticker import MaxNLocator

    fig, ax = _new_axes("Mean time per training step, by phase", "run", "seconds per step")
    means = [run.mean_phase_seconds() for run in runs]
    phases: list[str] = []
    for m in means:
        phases += [p for p in m if p not in phases]
    order = [p for p in STEP_PHASES if p in phases] + [p for p in phases if p not in (*STEP_PHASES, "other", *OUTSIDE_STEP)]
    order += [p for p in ("other", *OUTSIDE_STEP) if p in phases]
    xs = list(range(len(runs)))
    bottom = [0.0] * len(runs)
    for j, phase in enumerate(order):
        heights = [m.get(phase, 0.0) for m in means]
        ax.bar(xs, heights, bottom=bottom, width=0.6, color=f"C{j % 10}", label=phase + (" (outside step)" if phase in OUTSIDE_STEP else ""))
        bottom = [b + h for b, h in zip(bottom, heights)]
    for x, total in zip(xs, bottom):
        if total > 0:
            ax.annotate(f"{total:.2f}s", (x, total), ha="center", va="bottom", fontsize="small", xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs, [r.label for r in runs], rotation=15 if len(runs) > 3 else 0)
    ax.set_xlim(-0.6, len(runs) - 0.4)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8))
    ax.grid(True, axis="y", alpha=0.3)
    ax.grid(False, axis="x")
    if order:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no time/step values in these runs", transform=ax.transAxes, ha="center", va="center", color="gray")
    return fig


def _pass_at_k_figure(runs: list[_Run]):
    found = [(i, run, run.last_pass_at_k()) for i, run in enumerate(runs)]
    found = [(i, run, p) for i, run, p in found if p is not None]
    if not found:
        return None
    fig, ax = _new_axes("Held-out pass@k at the last evaluation", "k", "pass@k")
    ks: set[int] = set()
    for i, run, (step, k, v) in found:
        ax.plot(k, v, marker="o", markersize=4, color=f"C{i}", label=f"{run.label} (step {step})")
        ks.update(k)
    if len(ks) > 1 and max(ks) / max(1, min(ks)) >= 16:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ks), [str(k) for k in sorted(ks)])
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return fig


def _v05_figure(runs: list[_Run]):
    """Prior against p̂, the share accepted/shrunk/rejected per step, and extra rollouts against
    the prior's error, for the first run that logged V0.5 decisions."""
    from matplotlib.figure import Figure

    # every run has a decisions.jsonl, empty but for V0.5's
    found = next(((run, d) for run in runs if (Path(run.dir) / DECISIONS_FILE).exists() and (d := load_decisions(run.dir))), None)
    if found is None:
        return None
    run, steps = found
    rows = [(step, r) for step, rs in steps.items() for r in rs]
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    ax_prior, ax_share, ax_extra = fig.subplots(1, 3)
    fig.suptitle(f"V0.5 decisions: {run.label}")
    points = ax_prior.scatter(
        [r.get("prior", math.nan) for _, r in rows], [r["k"] / r["n"] for _, r in rows],
        c=[s for s, _ in rows], cmap="viridis", s=10, alpha=0.7,
    )
    ax_prior.plot([0, 1], [0, 1], color="gray", linewidth=0.8, linestyle="--")
    fig.colorbar(points, ax=ax_prior, label="step")
    ax_prior.set(title="prior against p̂", xlabel="prior p0 (before the rollouts)", ylabel="p̂ = k / n")
    xs = list(steps)
    bottom = [0.0] * len(xs)
    for j, kind in enumerate(("accepted", "shrunk", "rejected")):
        share = [sum(r.get("decision") == kind for r in steps[s]) / len(steps[s]) for s in xs]
        ax_share.bar(xs, share, bottom=bottom, width=0.9, color=f"C{j}", label=kind)
        bottom = [b + h for b, h in zip(bottom, share)]
    ax_share.set(title="share of priors accepted / shrunk / rejected", xlabel="step", ylabel="share of prompts", ylim=(0, 1))
    ax_share.legend(fontsize="small")
    err = [abs(r.get("prior", math.nan) - r["k"] / r["n"]) for _, r in rows]
    extra = [r.get("extra", 0) for _, r in rows]
    ax_extra.scatter(err, extra, s=10, alpha=0.4, color="C3")
    edges = [i / 10 for i in range(11)]
    centers, means = [], []
    for lo, hi in zip(edges, edges[1:]):
        sel = [x for e, x in zip(err, extra) if lo <= e < hi or (hi == 1.0 and e == 1.0)]
        if sel:
            centers.append((lo + hi) / 2)
            means.append(sum(sel) / len(sel))
    ax_extra.plot(centers, means, marker="o", color="black", label="mean per bin")
    ax_extra.set(title="extra rollouts against the prior's error", xlabel="|p0 − p̂|", ylabel="extra rollouts bought")
    ax_extra.legend(fontsize="small")
    for ax in (ax_prior, ax_share, ax_extra):
        ax.grid(True, alpha=0.3)
    return fig


def _env_figure(runs: list[_Run]):
    """Multi-turn episodes per step: turns and tool calls per episode, the tool error rate, and the
    share of episodes each ending (the environment's, or a limit) closed; None without env runs."""
    from matplotlib.figure import Figure

    runs = [run for run in runs if run.series("env/episodes")[0]]
    if not runs:
        return None
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    fig.suptitle("Multi-turn episodes (env=...)")
    for i, run in enumerate(runs):
        for key, style in (("env/turns_per_episode", "-"), ("env/tool_calls_per_episode", "--")):
            xs, ys = run.series(key)
            axes[0].plot(xs, ys, style, color=f"C{i}", label=f"{run.label}: {key.split('/')[1].replace('_per_episode', '')}")
        axes[1].plot(*run.series("env/tool_error_rate"), color=f"C{i}", label=run.label)
        endings = sorted({k for r in run.records for k in r if k.startswith("env/ended_share/")})
        for j, key in enumerate(endings):
            axes[2].plot(*run.series(key), color=f"C{i}", linestyle=("-", "--", ":", "-.")[j % 4], label=f"{run.label}: {key.rsplit('/', 1)[1]}")
    axes[0].set(title="per episode", xlabel="step", ylabel="turns (solid), tool calls (dashed)")
    axes[1].set(title="tool calls that failed", xlabel="step", ylabel="error rate", ylim=(0, 1))
    axes[2].set(title="how episodes ended", xlabel="step", ylabel="share of episodes", ylim=(0, 1))
    for ax in axes:
        ax.grid(True, alpha=0.3)
        _finish(ax, "no values")
    return fig


def build_figures(run_dirs: list[str]) -> dict[str, "object"]:
    """``{file name: matplotlib Figure}`` for the given runs (pass_at_k.png only if some run has pass@k,
    v05_decisions.png only if some run logged V0.5 decisions, episodes.png only for multi-turn runs)."""
    if not run_dirs:
        raise ValueError("no run directories given")
    run_dirs = [str(d) for d in run_dirs]
    runs = [_Run(d, lab) for d, lab in zip(run_dirs, _unique_labels(run_dirs))]
    for run in runs:  # empty figures, written as if plotted, said nothing of why
        if not run.records:
            raise ValueError(f"{Path(run.dir) / METRICS_FILE} holds no complete record: nothing to plot")
    figs = {
        "reward_vs_step.png": _curve_figure(runs, "reward", "step", "Training reward", "step", "mean reward (train batch)", None),
        "heldout_vs_step.png": _curve_figure(runs, "eval/accuracy", "step", "Held-out accuracy", "step", "held-out accuracy", "o"),
        "reward_vs_rollouts.png": _curve_figure(
            runs, "reward", "rollouts", "Training reward vs rollouts spent", "cumulative rollouts", "mean reward (train batch)", None
        ),
        "heldout_vs_rollouts.png": _curve_figure(
            runs, "eval/accuracy", "rollouts", "Held-out accuracy vs rollouts spent", "cumulative rollouts", "held-out accuracy", "o"
        ),
        "step_time_breakdown.png": _time_figure(runs),
    }
    pass_fig = _pass_at_k_figure(runs)
    if pass_fig is not None:
        figs["pass_at_k.png"] = pass_fig
    for name, fig in (("v05_decisions.png", _v05_figure(runs)), ("episodes.png", _env_figure(runs))):
        if fig is not None:
            figs[name] = fig
    return figs


def plot_runs(run_dirs: list[str], out_dir: str | None = None) -> list[Path]:
    """Write the comparison PNGs for ``run_dirs`` into ``out_dir`` (default ``<first run dir>/plots``)."""
    if not run_dirs:
        raise ValueError("no run directories given")
    out = Path(out_dir) if out_dir is not None else Path(run_dirs[0]) / "plots"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder for the PNGs")
    figs = build_figures(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figs.items():
        path = out / name
        fig.savefig(path, dpi=110, format="png")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rlvr plot",
        description="Plot learning curves and step-time breakdowns from the metrics.jsonl of one or more run directories.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", metavar="DIR", default=None, help="where to write the PNGs (default: FIRST_RUN_DIR/plots)")
    args = parser.parse_args(argv)
    try:
        paths = plot_runs(run_dir_arguments(args.run_dirs), args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"rlvr plot: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
