"""Where each method's gain over GRPO survives the learner's optimizer: the policy-gradient
simulator (`pg_simulator.py`) under plain SGD and under AdamW (issue 28, part 3).

    .venv/bin/python -m benchmarks.experiments.pg_regimes [--seeds 40] [--steps 100] [--workers 2] [--quick]

Under SGD a constant advantage scale changes the step (GRPO's division by the group std, HA-DW's
λ, focal's shrinking); under Adam it cancels, so what is left of a gain there is the method's
direction, not its step size. Each method is swept along the axis its claim depends on:

- V0.5 (good, biased and useless prior) against n0, the rollouts per prompt before its extra rounds;
- focal (γ 0.5) against the number of correct answers per prompt (one common, the rest rare),
  read at pass@1, pass@64 and the mass left on the rare answers;
- HA-DW (window anchor, λ 1.5, rlvr's default) against prompts per step and group size.

Every cell compares the method with GRPO on the same seeds (the same worlds and prompt draws), so
each gain is a paired difference with a 95 % interval over seeds. Writes pg_regimes.json and
pg_regimes.png (one panel per method and figure of merit: gain against the axis, a line per
optimizer) to --out and prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.experiments import pg_simulator as sim

CONFIGS = {c.name: c for c in sim.CONFIGS}
OPTIMIZERS = ("sgd", "adam")


def cells(quick: bool) -> list[dict]:
    """(method, axis, value, metrics, the run settings that vary): what the figure shows."""
    n0s, corrects, batches = ((2, 4), (2, 4), (8, 16)) if quick else ((2, 4, 8), (2, 4, 8), (8, 16, 32))
    out = []
    for prior in ("good", "biased", "useless"):
        for n0 in n0s:
            out.append(dict(method=f"v05-{prior}", axis="n0", value=n0, run=dict(n0=n0),
                            metrics=("pass@1", "baseline_mse", "rollouts")))
    for c in corrects:
        out.append(dict(method="grpo+focal", axis="correct answers", value=c, run=dict(correct_n=c),
                        metrics=("pass@1", "pass@64", "rare_mass")))
    for batch in batches:
        for n0 in n0s:
            out.append(dict(method="grpo+hadw", axis="batch x group", value=f"{batch}x{n0}", run=dict(batch=batch, n0=n0),
                            metrics=("pass@1", "cos_hard")))
    return out


def one_run(job: tuple) -> tuple:
    import torch

    torch.set_num_threads(1)  # one run per worker process
    name, optimizer, settings, seed, args = job
    lr = args["lr_adam"] if optimizer == "adam" else args["lr_sgd"]
    varied = dict(settings)  # n0 and correct_n not set here keep pg_simulator.run's defaults
    batch = varied.pop("batch", args["batch"])
    out = sim.run(CONFIGS[name], seed, args["steps"], args["prompts"], args["answers"], batch, lr, args["steps"],
                  optimizer=optimizer, **varied)
    final = out["curve"][-1]
    figures = {k: final[k] for k in ("pass@1", "pass@64", "rare_mass", "rollouts")}
    figures["baseline_mse"] = out["baseline_mse"]
    figures["cos_hard"] = out["grad_cosine"]["hard"]
    return job[:4], figures


def paired(diffs: list[float]) -> dict:
    d = [x for x in diffs if x is not None and not math.isnan(x)]
    if not d:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / max(1, len(d) - 1))
    half = 1.96 * sd / math.sqrt(len(d))
    return {"mean": m, "lo": m - half, "hi": m + half, "n": len(d)}


def key(settings: dict) -> tuple:
    return tuple(sorted(settings.items()))


def measure(args) -> dict:
    grid = cells(args.quick)
    settings = {"steps": args.steps, "prompts": args.prompts, "answers": args.answers, "batch": args.batch,
                "lr_sgd": args.lr_sgd, "lr_adam": args.lr_adam}
    jobs = set()
    for cell in grid:
        for opt in OPTIMIZERS:
            for seed in range(args.seeds):
                jobs.add((cell["method"], opt, key(cell["run"]), seed))
                jobs.add(("grpo", opt, key(cell["run"]), seed))
    jobs = sorted(jobs, key=str)
    results: dict[tuple, dict] = {}
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for i, (job, figures) in enumerate(pool.map(one_run, [(*j, settings) for j in jobs], chunksize=4), 1):
            results[job] = figures
            if i % 50 == 0 or i == len(jobs):
                print(f"[pg_regimes] {i}/{len(jobs)} runs, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for cell in grid:
        for opt in OPTIMIZERS:
            row = {"method": cell["method"], "axis": cell["axis"], "value": cell["value"], "optimizer": opt}
            for metric in cell["metrics"]:
                method = [results[(cell["method"], opt, key(cell["run"]), s)][metric] for s in range(args.seeds)]
                grpo = [results[("grpo", opt, key(cell["run"]), s)][metric] for s in range(args.seeds)]
                if metric == "rollouts":  # spend: a ratio, not a difference
                    row["rollouts_ratio"] = sum(method) / sum(grpo)
                    continue
                row[f"grpo/{metric}"] = sum(x for x in grpo if x is not None) / max(1, sum(x is not None for x in grpo))
                row[f"gain/{metric}"] = paired([None if a is None or b is None else a - b for a, b in zip(method, grpo)])
            rows.append(row)
    return {"settings": settings | {"seeds": args.seeds, "workers": args.workers}, "seconds": time.perf_counter() - start, "rows": rows}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("v05-good", "pass@1"), ("v05-useless", "pass@1"), ("v05-good", "baseline_mse"),
              ("grpo+focal", "rare_mass"), ("grpo+focal", "pass@64"), ("grpo+hadw", "pass@1"), ("grpo+hadw", "cos_hard")]
    fig, grid = plt.subplots(2, 4, figsize=(16, 8))
    axes = grid.flatten()
    axes[-1].axis("off")
    for ax, (method, metric) in zip(axes, panels):
        for opt, color in zip(OPTIMIZERS, ("tab:blue", "tab:orange")):
            rows = [r for r in report["rows"] if r["method"] == method and r["optimizer"] == opt]
            xs = [str(r["value"]) for r in rows]
            g = [r[f"gain/{metric}"] for r in rows]
            ax.errorbar(xs, [x["mean"] for x in g], yerr=[[x["mean"] - x["lo"] for x in g], [x["hi"] - x["mean"] for x in g]],
                        fmt="o-", capsize=3, color=color, label=opt)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{method}: {metric} − GRPO's", fontsize=9)
        ax.set_xlabel(rows[0]["axis"] if rows else "")
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--answers", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="prompts per step where the cell does not set it")
    ap.add_argument("--lr-sgd", type=float, default=8.0)
    ap.add_argument("--lr-adam", type=float, default=0.05, help="with --lr-sgd 8, GRPO ends near the same pass@1 (0.56) under both at 100 steps")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 seeds x 10 steps, two values per axis: checks the outputs, measures nothing")
    ap.add_argument("--out", default="benchmarks/out/pg_regimes")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.prompts = 3, 10, 32
    report = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pg_regimes.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "pg_regimes.png")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
