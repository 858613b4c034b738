"""How far each baseline was from the true success rate, from runs with the oracle on.

`rlvr train ... eval.oracle.samples=32` writes oracle.jsonl (one record per training prompt at each
oracle step); this reads one or more run dirs and prints, per run, each baseline's mean squared
error against p* (less the oracle's own sampling noise) with a 95 % bootstrap interval over the
(step, prompt) records, and its ratio to the group mean of the first n0 rollouts; the advantage
bias Â − A* by difficulty bucket (rlvr.train.oracle.report); and the cosine of each oracle step's
policy gradient with the gradient at A* (`oracle/grad_cosine`), over steps.

Usage: python -m benchmarks.experiments.oracle_report RUN_DIR [RUN_DIR ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlvr.train.oracle import report


def cosine_summary(runs: list[Path], reps: int = 2000) -> dict | None:
    """`oracle/grad_cosine` over the oracle steps of the runs, pooled: mean, 95 % bootstrap interval
    over steps; with a weighting, the same for `oracle/grad_cosine_unweighted` and the paired
    difference weighted − unweighted (the same steps resampled for both)."""
    import numpy as np

    metrics = [json.loads(line) for run in runs for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [m for m in metrics if m.get("oracle/grad_cosine") is not None and not np.isnan(m["oracle/grad_cosine"])]
    if not steps:
        return None
    idx = np.random.default_rng(0).integers(0, len(steps), size=(reps, len(steps)))

    def summary(values: np.ndarray) -> dict:
        boot = values[idx].mean(1)
        return {"mean": float(values.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}

    weighted = np.array([m["oracle/grad_cosine"] for m in steps])
    out = {"steps": len(steps), **summary(weighted)}
    if all("oracle/grad_cosine_unweighted" in m for m in steps):
        unweighted = np.array([m["oracle/grad_cosine_unweighted"] for m in steps])
        out["unweighted"] = summary(unweighted)
        out["weighted_minus_unweighted"] = summary(weighted - unweighted)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    result = {}
    for run in args.runs:
        path = run / "oracle.jsonl"
        if not path.is_file():
            sys.exit(f"{path}: no oracle records (train with eval.oracle.samples=M)")
        result[str(run)] = report([json.loads(line) for line in path.read_text().splitlines()])
        result[str(run)]["grad_cosine"] = cosine_summary([run])
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
