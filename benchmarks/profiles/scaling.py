"""How a step's cost grows with the work (issue "Performance at the limit of the box", part 4).

    .venv/bin/python -m benchmarks.profiles.scaling [--prompts 8,16,32,64] [--max-tokens 64,256,1024] [--steps 2] [key=value ...]
    .venv/bin/python -m benchmarks.profiles.scaling --quick      # the tiny model, two small settings (the test)

Trains the default model with GRPO (a fixed n rollouts per prompt, so the work is what the setting
says; V0.5 would buy a variable number) in this process, once per setting: prompts per step
(`trainer.batch_size`) at the default `rollout.max_tokens`, then `rollout.max_tokens` at the
smallest prompt count. The runs share their actors (`cluster.keep_roles`), so only the first
starts them. Writes JSON (stdout and --out) and a PNG beside it, with per setting:

- seconds per phase (generate, verify, learn, sync, and the step), the mean over the steps after
  the first (the first carries warm-up costs), and the tokens generated and learned per step;
- peak memory per role: the high-water mark (VmHWM) of each Ray actor process by class, read after
  the run. The processes are kept across settings, so a figure is the peak of this setting and
  every one before it: the settings run smallest first.
- a least-squares fit of generation seconds against generated tokens and of learning seconds
  against learned tokens (`learner/tokens`: the response tokens in the loss; each prompt rides
  along once per micro-batch): the per-token cost and the fixed cost per step.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import OUT, write_report

PHASES = ("generate", "verify", "learn", "sync", "step")
# the role of each Ray actor class (the verifier's scoring workers are its forks, outside these figures)
ROLES = {"RolloutEngine": "rollout", "PolicyLearner": "learner", "_VerifierPoolImpl": "verifier", "ValueServer": "value"}


def role_peaks_mb() -> dict[str, float]:
    """The largest VmHWM among this process's Ray actor processes of each role class."""
    peaks: dict[str, float] = {}
    for p in psutil.Process().children(recursive=True):
        try:
            title = (p.cmdline() or [""])[0]
            role = next((name for cls, name in ROLES.items() if title.startswith(f"ray::{cls}")), None)
            if role is None:
                continue
            with open(f"/proc/{p.pid}/status") as f:
                hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
            peaks[role] = max(peaks.get(role, 0.0), hwm)
        except (psutil.NoSuchProcess, FileNotFoundError, StopIteration):
            continue
    return peaks


def run_setting(overrides: list[str], run_dir: Path) -> dict:
    from rlvr.config import compose
    from rlvr.train.loop import train

    result = train(compose([*overrides, f"run_dir={run_dir}"]))
    history = result["history"]
    measured = history[1:] if len(history) > 1 else history
    mean = lambda key: float(np.mean([h.get(key, 0.0) for h in measured]))  # noqa: E731
    return {
        "seconds": {p: mean(f"time/{p}") for p in PHASES},
        "gen_tokens": mean("gen_tokens"),
        "learn_tokens": mean("learner/tokens"),
        "rollouts": mean("rollouts"),
        "padding_share": mean("learner/padding_share"),
        "peak_mb": role_peaks_mb(),
    }


def fit(xs: list[float], ys: list[float]) -> dict:
    """y = fixed + per_token * x, least squares (two distinct token counts or more)."""
    if len(set(xs)) < 2 or not np.isfinite(ys).all():
        return {}
    per_token, fixed = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return {"per_token_s": float(per_token), "fixed_s": float(fixed), "tokens_per_s": float(1 / per_token) if per_token > 0 else None}


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, sweep, label in ((axes[0], "prompts", "prompts per step"), (axes[1], "max_tokens", "rollout.max_tokens")):
        rows = report["sweeps"][sweep]
        xs = [r["value"] for r in rows]
        bottom = np.zeros(len(rows))
        for phase in ("generate", "verify", "learn", "sync"):
            ys = np.array([r["seconds"][phase] for r in rows])
            ax.bar([str(x) for x in xs], ys, bottom=bottom, label=phase)
            bottom += ys
        ax.plot([str(x) for x in xs], [r["seconds"]["step"] for r in rows], "k.-", label="step")
        ax.set_xlabel(label)
        ax.set_ylabel("seconds per step")
        ax.legend(fontsize=8)
    rows = report["sweeps"]["prompts"]
    for role in ROLES.values():
        ys = [r["peak_mb"].get(role) for r in rows]
        if any(y is not None for y in ys):
            axes[2].plot([str(r["value"]) for r in rows], [y or 0 for y in ys], ".-", label=role)
    axes[2].set_xlabel("prompts per step")
    axes[2].set_ylabel("peak RSS per role (MiB)")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"rlvr step cost as the work grows ({report['model']}, GRPO n={report['n']}, {report['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default="8,16,32,64")
    ap.add_argument("--max-tokens", default="64,256,1024")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="the tiny model, prompts 2,4 and max tokens 8,16, 2 steps")
    ap.add_argument("--out", type=Path, default=OUT / "scaling.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    from rlvr.runtime.roles import release_kept_roles

    prompts = [2, 4] if args.quick else [int(x) for x in args.prompts.split(",")]
    max_tokens = [8, 16] if args.quick else [int(x) for x in args.max_tokens.split(",")]
    base = ["algorithm=grpo", "cluster.keep_roles=true", f"trainer.steps={args.steps}", "trainer.eval_every=0", "eval.at_start=false",
            "trainer.save_every=0", "trainer.progress=false", "resume=never"]  # a run dir left by an earlier sweep is started over
    if args.quick:
        base += ["model=tiny-random", "data.train.size=16"]
    base += args.overrides
    work = OUT / "scaling_runs"  # run dirs stay out of the results that --out may name
    report: dict = {"overrides": base, "cpus": os.cpu_count(), "load_average_before": os.getloadavg(), "sweeps": {"prompts": [], "max_tokens": []}}
    start = time.perf_counter()
    try:
        from rlvr.config import compose

        cfg = compose(base)
        report["model"], report["n"], report["default_max_tokens"] = cfg.model.path, cfg.algorithm.n, cfg.rollout.max_tokens
        for sweep, values, key in (("prompts", prompts, "trainer.batch_size"), ("max_tokens", max_tokens, "rollout.max_tokens")):
            for value in values:
                fixed = [] if sweep == "prompts" else [f"trainer.batch_size={prompts[0]}"]
                row = run_setting([*base, *fixed, f"{key}={value}"], work / f"{sweep}-{value}")
                report["sweeps"][sweep].append({"value": value, **row})
                print(f"[scaling] {sweep}={value}: step {row['seconds']['step']:.1f} s ({time.perf_counter() - start:.0f} s in all)", flush=True)
    finally:
        release_kept_roles()
    rows = report["sweeps"]["prompts"] + report["sweeps"]["max_tokens"]
    report["fit"] = {"generation": fit([r["gen_tokens"] for r in rows], [r["seconds"]["generate"] for r in rows]),
                     "learning": fit([r["learn_tokens"] for r in rows], [r["seconds"]["learn"] for r in rows])}
    report["seconds"] = time.perf_counter() - start
    write_report(report, args.out)
    plot(report, args.out.with_suffix(".png"))
    return report


if __name__ == "__main__":
    main()
