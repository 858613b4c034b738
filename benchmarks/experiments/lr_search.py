"""A learning rate for each preset, chosen on the validation split with the same budget for all.

Every (preset, lr) is one short `rlvr train` run on the default job's data with
``eval.split=validation``: data=mix's third draw, from which every training and held-out
question is removed, so nothing chosen here has seen a held-out prompt. Each run gets the same
steps, prompts per step and answer length; the presets keep their own optimizer steps per batch
(`algorithm.mini_batches`). The choice is the lr with the highest final validation accuracy
(greedy); the JSON also gives each figure's binomial standard error, so a choice inside the noise
shows as one.

Usage:
  python -m benchmarks.experiments.lr_search                          # grpo, dapo, cispo, v05 x 3e-6, 1e-5, 3e-5
  python -m benchmarks.experiments.lr_search --presets dapo --lrs 1e-6 3e-6
  python -m benchmarks.experiments.lr_search --quick                  # the tiny model: a test of the script
A rerun skips (preset, lr) runs that finished. Writes <out>/lr_search.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

PRESETS = ("grpo", "dapo", "cispo", "v05")
LRS = (3e-6, 1e-5, 3e-5)
KEEP = ("config.yaml", "summary.json", "metrics.jsonl", "eval.jsonl", "decisions.jsonl")


def budget(quick: bool, steps: int, prompts: int) -> list[str]:
    common = [f"trainer.steps={steps}", f"trainer.eval_every={steps}", "eval.at_start=false", "eval.split=validation",
              f"eval.size={prompts}", "trainer.save_every=0", "trainer.progress=false",
              "cluster.keep_roles=true"]  # each run resets the previous run's actors instead of starting its own
    if quick:
        return common + ["model=tiny-random", "trainer.batch_size=2", "data.train.size=12", "rollout.max_tokens=8"]
    return common + ["data=mix", "trainer.batch_size=8", "rollout.max_tokens=64"]


def run(presets: list[str], lrs: list[float], overrides: list[str], out: Path, quick: bool = False) -> dict:
    """Train each (preset, lr) in this process unless it finished before; read its final validation accuracy."""
    from rlvr.config import compose
    from rlvr.train.loop import train

    results: dict[str, dict[str, dict]] = {}
    for preset in presets:
        for lr in lrs:
            d = out / f"{preset}-lr{lr:g}"
            if not (d / "summary.json").exists():
                shutil.rmtree(d, ignore_errors=True)
                extra = ["algorithm.warmup_prompts=2"] if quick and preset == "v05" else []
                start = time.perf_counter()
                train(compose([f"algorithm={preset}", f"learner.lr={lr}", *overrides, *extra, f"run_dir={d}", "resume.mode=never"]))
                for path in d.iterdir():  # checkpoints and logs are not needed for the answer
                    if path.name not in KEEP:
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
                print(f"[lr_search] {preset} lr {lr:g}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            final = [json.loads(line) for line in (d / "eval.jsonl").read_text().splitlines() if line.strip()]
            last = max(r["step"] for r in final)
            correct = [r["greedy"] for r in final if r["step"] == last]
            acc = sum(correct) / len(correct)
            rollouts = sum(json.loads(line).get("rollouts", 0) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip())
            results.setdefault(preset, {})[f"{lr:g}"] = {
                "validation_accuracy": acc, "stderr": math.sqrt(acc * (1 - acc) / len(correct)), "prompts": len(correct),
                "rollouts": rollouts,
            }
    return results


def choose(results: dict) -> dict:
    """Per preset: the lr with the best validation accuracy, and its margin over the runner-up."""
    chosen = {}
    for preset, by_lr in results.items():
        ranked = sorted(by_lr.items(), key=lambda kv: -kv[1]["validation_accuracy"])
        best, runner_up = ranked[0], ranked[1] if len(ranked) > 1 else None
        chosen[preset] = {
            "lr": float(best[0]),
            "validation_accuracy": best[1]["validation_accuracy"],
            "margin_over_next": None if runner_up is None else best[1]["validation_accuracy"] - runner_up[1]["validation_accuracy"],
        }
    return chosen


def table(results: dict, chosen: dict) -> str:
    lrs = sorted({lr for by_lr in results.values() for lr in by_lr}, key=float)
    rows = ["| preset | " + " | ".join(f"lr {lr}" for lr in lrs) + " | chosen |", "|---" * (len(lrs) + 2) + "|"]
    for preset, by_lr in results.items():
        cells = [f"{by_lr[lr]['validation_accuracy']:.3f} ± {by_lr[lr]['stderr']:.3f}" if lr in by_lr else "" for lr in lrs]
        rows.append(f"| {preset} | " + " | ".join(cells) + f" | {chosen[preset]['lr']:g} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--lrs", nargs="+", type=float, default=list(LRS))
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 8; 1 with --quick)")
    ap.add_argument("--prompts", type=int, default=None, help="validation prompts (default 128; 4 with --quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/lr_search"))
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run, e.g. seed=1")
    args = ap.parse_args()
    steps = args.steps or (1 if args.quick else 8)
    prompts = args.prompts or (4 if args.quick else 128)
    overrides = budget(args.quick, steps, prompts) + args.overrides
    results = run(args.presets, args.lrs, overrides, args.out / "runs", args.quick)
    chosen = choose(results)
    record = {"steps": steps, "validation_prompts": prompts, "overrides": overrides, "results": results, "chosen": chosen}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lr_search.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(chosen))
    print(table(results, chosen))


if __name__ == "__main__":
    main()
