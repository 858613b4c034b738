"""Does each preset's defining mechanism act? A few steps of each preset (and weighting) on the
default job, read back from the run's own metrics, as one table.

A clip that never binds, a calibration window that never fills or a filter on the wrong signal
all look like "no effect" in a learning curve; this check says, per preset, whether its
mechanism acted at all, with the figure that shows it:

  dapo    clip-high fraction > 0; the filter dropped only groups uniform in correctness (none
          mixed in correctness, and those mixed only in shaped reward counted); the overlong
          penalty touched no answer shorter than its soft start (rollout.max_tokens - buffer)
  cispo   the IS-weight cap bound on some tokens (clip fraction > 0), and they kept their gradient
  v05     after the warm start the window is full enough and the first steps accept or shrink
          priors (not only reject); the baseline's mean squared distance from the group mean
  focal   weights in [0, 1]
  hadw    weights differ between groups (exp(D·|p̂ − C|) is not constant)
  every   TIS weights logged (mean weight and the share of tokens truncated)

Usage:
  python -m benchmarks.experiments.preset_check                 # SmolLM2-135M, data=mix, 3 steps each (~25 min)
  python -m benchmarks.experiments.preset_check --quick         # tiny random model, 2 steps each: the test
  python -m benchmarks.experiments.preset_check --configs dapo cispo --steps 4
Writes <out>/preset_check.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

CONFIGS = {
    "grpo": ["algorithm=grpo"],
    "dapo": ["algorithm=dapo"],
    "cispo": ["algorithm=cispo"],
    "v05": ["algorithm=v05"],
    "grpo+focal": ["algorithm=grpo", "weighting=focal"],
    "grpo+hadw": ["algorithm=grpo", "weighting=hadw"],
}
# On a random-init model the strict math reward is always 0: an odd-length answer counts as
# correct instead (a built-in regex term), so groups are mixed and every mechanism has work.
QUICK = [
    "model=tiny-random", "trainer.batch_size=4", "data.train.size=24", "eval.size=4", "rollout.max_tokens=16",
    "learner.lr=1e-3", "learner.micro_batch_size=8", "verifier.timeout_s=10", "cluster.keep_roles=true",
    "verifier.terms=[{fn: format, weight: 1.0, kwargs: {pattern: '(?:.{2})*.', mode: fullmatch, bonus: 1.0}, correctness: true}]",
]
QUICK_V05 = ["algorithm.warmup_prompts=8"]
KEEP = ("config.yaml", "summary.json", "metrics.jsonl", "decisions.jsonl", "warmup.jsonl")  # what a finished run keeps


def base_overrides(quick: bool, steps: int) -> list[str]:
    common = [f"trainer.steps={steps}", "trainer.eval_every=0", "eval.at_start=false", "trainer.save_every=0", "trainer.progress=false",
              "cluster.keep_roles=true"]  # each run resets the previous run's actors instead of starting its own
    return common + (QUICK if quick else ["trainer.batch_size=8", "rollout.max_tokens=64", "data=mix"])


def _steps(history: list[dict]) -> list[dict]:
    return [h for h in history if h["step"] >= 1]


def _max(steps: list[dict], key: str) -> float:
    values = [h[key] for h in steps if key in h and not math.isnan(h[key])]
    return max(values) if values else float("nan")


def checks(name: str, history: list[dict], run_dir: Path, cfg) -> dict[str, dict]:
    """{check: {"value": figure, "ok": bool}} for this config's mechanisms, from its own records."""
    steps = _steps(history)
    out: dict[str, dict] = {}
    algo, weighting = cfg.algorithm.name, cfg.weighting.name
    if "learner/rollout_weight_mean" in steps[-1]:
        out["tis_logged"] = {"value": round(_max(steps, "learner/rollout_weight_mean"), 4), "ok": True}
    if algo == "dapo":
        from rlvr.config import overlong_buffer

        soft_start = cfg.rollout.max_tokens - overlong_buffer(cfg)
        shortest = min((h["overlong_shortest_penalised"] for h in steps if "overlong_shortest_penalised" in h), default=None)
        out["clip_high_frac"] = {"value": _max(steps, "learner/clip_frac_high"), "ok": _max(steps, "learner/clip_frac_high") > 0}
        out["filter_dropped_acc_mixed"] = {"value": sum(h["dapo/dropped_acc_mixed"] for h in steps), "ok": all(h["dapo/dropped_acc_mixed"] == 0 for h in steps)}
        out["filter_dropped_groups"] = {"value": sum(h["dapo/dropped_groups"] for h in steps), "ok": True}
        out["filter_dropped_reward_mixed"] = {"value": sum(h["dapo/dropped_reward_mixed"] for h in steps), "ok": True}
        out["overlong_penalised"] = {"value": sum(h.get("overlong_penalised", 0) for h in steps), "ok": True}
        out["overlong_shortest_vs_soft_start"] = {"value": f"{shortest} >= {soft_start}", "ok": shortest is None or shortest >= soft_start}
    if algo == "cispo":
        out["cap_frac"] = {"value": _max(steps, "learner/clip_frac"), "ok": _max(steps, "learner/clip_frac") > 0}
        out["capped_tokens_keep_gradient"] = {"value": _max(steps, "learner/clipped_grad_frac"), "ok": _max(steps, "learner/clipped_grad_frac") > 0}
    if cfg.algorithm.sampling == "adaptive":
        warm = history[0] if history and history[0]["step"] == 0 else {}
        first = steps[: min(2, len(steps))]
        trusted = sum(h["v05/accepted"] + h["v05/shrunk"] for h in first)
        decisions = [json.loads(line) for line in (run_dir / "decisions.jsonl").read_text().splitlines()]
        moved = [(d["baseline"] - d["k"] / d["n"]) ** 2 for d in decisions]
        out["warmup_window"] = {"value": warm.get("v05/window", 0), "ok": warm.get("v05/window", 0) >= cfg.algorithm.warmup_prompts > 0}
        out["warmup_prior_brier_vs_context_mean"] = {
            "value": f"{warm.get('warmup/prior_brier', float('nan')):.4f} vs {warm.get('warmup/context_mean_brier', float('nan')):.4f}",
            "ok": True,
        }
        out["first_steps_accepted_or_shrunk"] = {"value": f"{trusted} of {sum(h['groups'] for h in first)}", "ok": trusted > 0}
        out["baseline_sq_dist_from_group_mean"] = {"value": round(sum(moved) / max(1, len(moved)), 5), "ok": True}
        out["decisions_acc_shr_rej"] = {
            "value": "/".join(str(sum(h[f"v05/{d}"] for h in steps)) for d in ("accepted", "shrunk", "rejected")),
            "ok": True,
        }
    if weighting == "focal":
        lo, hi = min(h.get("weighting/min", 1.0) for h in steps), _max(steps, "weighting/max")
        out["focal_weights_in_0_1"] = {"value": f"[{lo:.3f}, {hi:.3f}]", "ok": 0 <= lo and hi <= 1}
    if weighting == "hadw":
        lo, hi = min(h.get("weighting/min", 1.0) for h in steps), _max(steps, "weighting/max")
        out["hadw_weights_vary"] = {"value": f"[{lo:.3f}, {hi:.3f}]", "ok": hi > lo}
    return out


def run(configs: list[str], overrides: list[str], out: Path, quick: bool = False) -> dict:
    """Train each config for a few steps in this process and check its mechanisms."""
    from rlvr.config import compose
    from rlvr.train.loop import train

    results = {}
    for name in configs:
        extra = QUICK_V05 if quick and name.startswith("v05") else []
        cfg = compose(CONFIGS[name] + overrides + extra + [f"run_dir={out / name}", "resume.mode=never"])
        start = time.perf_counter()
        history = train(cfg)["history"]
        found = checks(name, history, Path(cfg.run_dir), cfg)
        for path in Path(cfg.run_dir).iterdir():  # the records answer; checkpoints (GBs) and logs go
            if path.name not in KEEP:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        results[name] = {"seconds": round(time.perf_counter() - start, 1), "checks": found, "ok": all(c["ok"] for c in found.values())}
        print(f"[preset_check] {name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['seconds']} s", file=sys.stderr, flush=True)
    return results


def table(results: dict) -> str:
    rows = ["| config | check | value | acted |", "|---|---|---|---|"]
    for name, r in results.items():
        for check, c in r["checks"].items():
            rows.append(f"| {name} | {check} | {c['value']} | {'yes' if c['ok'] else '**no**'} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=None, help="steps per config (default 3; 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="the tiny random model: a test of the check itself")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/preset_check"))
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run, e.g. seed=1")
    args = ap.parse_args()
    steps = args.steps or (2 if args.quick else 3)
    results = run(args.configs, base_overrides(args.quick, steps) + args.overrides, args.out / "runs", args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"steps": steps, "quick": args.quick, "overrides": args.overrides, "results": results}
    (args.out / "preset_check.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({name: r["ok"] for name, r in results.items()}))
    print(table(results))
    sys.exit(0 if all(r["ok"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
