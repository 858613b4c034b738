"""Learner settings on the default job: full fp32 weights against bf16 autocast and LoRA ranks.

    .venv/bin/python -m benchmarks.micro.learner_settings [--settings fp32 bf16 lora16 lora64] [--steps 20]
        [--lora-lr 1e-4] [--out DIR] [key=value ...]

One invocation runs `rlvr train` (the default job: V0.5, SmolLM2-135M, data=mix; the overrides are
passed on) once per setting, one after the other, each in its own run dir under --out:

    fp32     full weights, model.train_dtype=float32
    bf16     full weights, model.train_dtype=bfloat16 (autocast over fp32 weights and Adam state;
             the default for smollm2-135m since this benchmark)
    loraN    LoRA adapters of rank N (model.lora.rank=N), float32 Held-out accuracy (256 prompts, greedy) is taken before the first step (once: the
step-0 model is the same for every run) and after the last; in between nothing is evaluated, so
the runs spend their time training. Printed as JSON (and written to --out/lora.json):

- per run: learn seconds per step (mean, the first step excluded: it pays one-off set-up), the
  learner's peak RSS, trainable parameters, the rollout-vs-learner log-prob gap per token
  (mean |log π_old − log μ|: bf16 widens it), held-out accuracy at the last step, wall seconds;
- each setting ÷ fp32 for learn time and peak RSS, measured in this one invocation.

Learning rates: full weights use the job's `learner.lr` (1e-5); LoRA uses `--lora-lr`, 10× that, the
ratio "LoRA Without Regret" (Schulman et al., Thinking Machines 2025) found optimal for LoRA with a
fixed alpha = 32 at every rank, in RL as in SFT. Nothing is tuned on the held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import write_report
from rlvr.analysis.plots import load_metrics


def trainable_params(model_path: str, rank: int) -> int:
    from transformers import AutoModelForCausalLM

    from rlvr.config import compose
    from rlvr.lora import LoraSettings, add_adapters

    model = AutoModelForCausalLM.from_pretrained(model_path)
    if rank:
        lora = compose([f"model.lora.rank={rank}"]).model.lora
        model = add_adapters(model, LoraSettings.from_config(lora))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def run(name: str, overrides: list[str], args) -> dict:
    run_dir = args.out / name
    cmd = [
        sys.executable, "-m", "rlvr.cli", "train", f"run_dir={run_dir}", f"trainer.steps={args.steps}",
        f"trainer.eval_every={args.steps}", "trainer.save_every=0", "trainer.progress=false", "resume=never", *overrides, *args.overrides,
    ]
    print(f"[learner_settings] {name}: {' '.join(cmd[3:])}", file=sys.stderr, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(args.out / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)).returncode
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"[learner_settings] {name} failed (exit {rc}); see {args.out / f'{name}.log'}")
    records = load_metrics(run_dir)
    steps = [r for r in records if r["step"] >= 1]
    learn = [r["time/learn"] for r in steps[1:] or steps]
    final = next(r for r in reversed(records) if "eval/accuracy" in r)
    first = next((r for r in records if r["step"] == 0 and "eval/accuracy" in r), None)
    gaps = [r["learner/rollout_logprob_diff"] for r in steps if "learner/rollout_logprob_diff" in r]
    out = {
        "learn_s_per_step": sum(learn) / len(learn),
        "rollout_logprob_gap_per_token": sum(gaps) / len(gaps) if gaps else None,
        "learner_peak_rss_mb": max(r.get("learner/peak_rss_mb", 0.0) for r in steps),
        "heldout_accuracy": final["eval/accuracy"],
        "heldout_step": final["step"],
        "wall_s": wall,
    }
    if first is not None:
        out["heldout_accuracy_step0"] = first["eval/accuracy"]
    print(f"[learner_settings] {name}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def setting_overrides(setting: str, args) -> list[str]:
    if setting == "fp32":
        return ["model.train_dtype=float32"]
    if setting == "bf16":
        return ["model.train_dtype=bfloat16"]
    if setting.startswith("lora") and setting[4:].isdigit():
        return [f"model.lora.rank={int(setting[4:])}", f"learner.lr={args.lora_lr}", "model.train_dtype=float32"]
    raise SystemExit(f"unknown setting {setting!r}: fp32, bf16 or loraN (e.g. lora16)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=["fp32", "bf16", "lora16", "lora64"], help="the first is the reference")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lora-lr", type=float, default=1e-4)
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/learner_settings"))
    p.add_argument("overrides", nargs="*", help="passed to every run, e.g. model=tiny-random")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from rlvr.config import compose
    from rlvr.models import resolve_model_path

    cfg = compose(args.overrides)
    model_path = resolve_model_path(cfg.model.path, cfg.cache_dir)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()
    runs = {}
    for i, setting in enumerate(args.settings):
        extra = setting_overrides(setting, args) + ([] if i == 0 else ["eval.at_start=false"])  # step 0 is the same model
        runs[setting] = run(setting, extra, args)
        rank = int(setting[4:]) if setting.startswith("lora") else 0
        runs[setting].update(trainable_params=trainable_params(model_path, rank), lr=args.lora_lr if rank else cfg.learner.lr)
    ref_name = args.settings[0]
    ref = runs[ref_name]
    for name, r in runs.items():
        if name != ref_name:
            r[f"learn_time_vs_{ref_name}"] = r["learn_s_per_step"] / ref["learn_s_per_step"]
            r[f"peak_rss_vs_{ref_name}"] = r["learner_peak_rss_mb"] / ref["learner_peak_rss_mb"]
            r[f"heldout_minus_{ref_name}"] = r["heldout_accuracy"] - ref["heldout_accuracy"]
    report = {
        "started": started,
        "load_average_before": load_before,
        "steps": args.steps,
        "overrides": args.overrides,
        "runs": runs,
    }
    write_report(report, args.out / "learner_settings.json")


if __name__ == "__main__":
    main()
