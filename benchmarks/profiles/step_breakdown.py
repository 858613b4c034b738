"""Where a training step's time goes, and what the rollout pool costs over a bare vLLM engine.

    .venv/bin/python -m benchmarks.profiles.step_breakdown [--steps 3] [--max-staleness 0,1] [key=value overrides ...]

Runs the default job (V0.5 on SmolLM2-135M, or whatever the overrides select) for a few steps,
once per `--max-staleness` value (0: generate, then train; 1: one-step-off async), then, in the
same process after the actors are gone, a bare in-process vLLM engine on the same prompts with
the same sampling settings. Writes JSON (stdout and --out):
- per staleness: seconds per step, the share of generation hidden behind learning
  (1 − learner wait / generate time), learner idle (waiting for data) and generator idle
  (waiting for weights) per step; the async ÷ sync step-time ratio measured here, and the one
  expected on separate devices, (generate + learn) / max(generate, learn) from the sync run's
  phases, since on this box both phases share the same two cores;
- seconds per phase (mean over steps, the first step excluded when there are several);
- pool tokens/s ÷ bare-engine tokens/s (target ≥ 0.9). The bare engine runs first, in a fresh
  process of its own before Ray starts (with the pool engine's threads, dtype, sampling and max
  tokens), on the same per-step prompt batches with n rollouts each: an engine started in this
  process after Ray shut down measured ~40% slower than a standalone one. The pool's figure
  includes V0.5's extra-rollout rounds, which are smaller batches (`algorithm=grpo` has none);
- the share of the step outside generate and learn (target ≤ 10%);
- weight-sync seconds and bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, write_report


def bare_vllm_tokens_per_s(cfg, model_path: str, batches: list[list[str]], n: int) -> dict:
    """A bare engine in this process, fed the run's per-step prompt batches one call each."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["OMP_NUM_THREADS"] = str(cfg.rollout.threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(cfg.rollout.kv_cache_gb)))
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model_path,
        dtype=cfg.model.rollout_dtype,
        max_model_len=cfg.model.max_model_len,
        seed=cfg.seed,
        enforce_eager=True,
        gpu_memory_utilization=0.3,
        logprobs_mode="processed_logprobs",
    )
    params = SamplingParams(
        n=n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=cfg.rollout.max_tokens, logprobs=0
    )
    llm.generate(batches[0][:2], params, use_tqdm=False)  # warm-up, as the pool had its own
    tokens, seconds = 0, 0.0
    for prompts in batches:
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds += time.perf_counter() - start
        tokens += sum(len(c.token_ids) for o in outs for c in o.outputs)
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds}


def bare_engine_in_fresh_process(overrides: list[str], batches: list[list[str]]) -> dict:
    """`bare_vllm_tokens_per_s` in a new interpreter: nothing of Ray, the pool or this process's
    thread pools around it."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rlvr-bare-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"overrides": overrides, "batches": batches}))
        proc = subprocess.run([sys.executable, "-m", __spec__.name, "--bare-engine", str(spec)], capture_output=True, text=True,
                              timeout=3600, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(f"bare engine failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def bare_engine_main(spec_path: str) -> None:
    from rlvr.config import compose
    from rlvr.models import resolve_model_path

    spec = json.loads(Path(spec_path).read_text())
    cfg = compose(spec["overrides"])
    os.environ["OMP_NUM_THREADS"] = str(cfg.rollout.threads)  # as threads_env gives the pool's engines
    import torch

    torch.set_num_threads(cfg.rollout.threads)
    result = bare_vllm_tokens_per_s(cfg, resolve_model_path(cfg.model.path, cfg.cache_dir), spec["batches"], cfg.algorithm.n)
    print(json.dumps(result))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-engine":
        return bare_engine_main(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-staleness", default="0,1", help="comma-separated trainer.max_staleness values, run one after another")
    ap.add_argument("--out", default="benchmarks/out/step_breakdown.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import ray
    from omegaconf import OmegaConf

    from rlvr.config import compose
    from rlvr.data import PromptStream, load_problems, prompt_renderer
    from rlvr.models import resolve_model_path
    from rlvr.train.loop import train

    base = [f"trainer.steps={args.steps}", "trainer.eval_every=0", "trainer.save_every=0", "resume.mode=never"]
    # The prompts of the run's measured steps (the first pays set-up), through a bare engine first.
    cfg0 = compose(base + args.overrides)
    model_path = resolve_model_path(cfg0.model.path, cfg0.cache_dir)
    render = prompt_renderer(cfg0, model_path)
    stream = PromptStream(load_problems(OmegaConf.to_container(cfg0.data.train, resolve=True)), seed=cfg0.seed)
    batches = [[render(p) for p in stream.next(cfg0.trainer.batch_size)] for _ in range(args.steps)]
    batches = batches[1:] if len(batches) > 1 else batches
    bare = bare_engine_in_fresh_process(base + args.overrides, batches)

    def run(k: int):
        cfg = compose(base + [f"trainer.max_staleness={k}", f"run_dir=benchmarks/out/step_breakdown_run_k{k}"] + args.overrides)
        steps = [h for h in train(cfg)["history"] if h["step"] >= 1]
        measured = steps[1:] if len(steps) > 1 else steps
        mean = lambda key: sum(h.get(key, 0.0) for h in measured) / len(measured)  # noqa: E731
        phases = {p: mean(f"time/{p}") for p in ("generate", "verify", "value", "collect", "learn", "sync", "step", "learner_wait", "generator_wait")}
        return cfg, steps, measured, phases

    by_k, runs = {}, {}
    for k in [int(x) for x in args.max_staleness.split(",")]:
        cfg_k, steps_k, measured_k, phases = run(k)
        runs[k] = cfg_k, measured_k
        by_k[k] = {
            "seconds_per_phase": phases,
            "step_s": phases["step"],
            "generation_hidden_share": (1 - phases["learner_wait"] / phases["collect"]) if k and phases["collect"] else 0.0,
            "learner_idle_s": phases["learner_wait"] if k else phases["collect"],
            "generator_idle_s": phases["generator_wait"] if k else phases["step"] - phases["collect"],
            "stale_dropped": sum(h.get("async/stale_dropped", 0) for h in steps_k),
        }
    ray.shutdown()
    # The headline figures all come from one run: the smallest staleness asked for, whatever the order.
    cfg, measured = runs[min(by_k)]
    phases = by_k[min(by_k)]["seconds_per_phase"]
    pool_rate = sum(h["gen_tokens"] for h in measured) / sum(h["time/generate"] for h in measured)
    overlap = {}
    if 0 in by_k and len(by_k) > 1:
        gen, learn = phases["collect"], phases["learn"] + phases["sync"]
        for k in sorted(by_k):
            if k:
                overlap[f"sync_over_async_k{k}"] = by_k[0]["step_s"] / by_k[k]["step_s"]
        overlap["expected_on_separate_devices"] = (gen + learn) / max(gen, learn)

    outside = (phases["step"] - phases["generate"] - phases["learn"]) / phases["step"]
    report = {
        "load_average_1_5_15min": os.getloadavg(),
        "config": {"algorithm": cfg.algorithm.name, "steps": args.steps, "batch_size": cfg.trainer.batch_size, "n": cfg.algorithm.n},
        "seconds_per_phase": phases,
        "by_max_staleness": by_k,
        "async_speedup": overlap,
        "pool_tokens_per_s": pool_rate,
        "bare_vllm_tokens_per_s": bare["tokens_per_s"],  # a fresh process, before Ray started
        "pool_over_bare": pool_rate / bare["tokens_per_s"],
        "share_outside_generate_and_learn": outside,
        "sync_seconds": phases["sync"],
        "sync_bytes": measured[-1].get("sync/bytes"),
        "targets": {
            "pool_over_bare>=0.9": pool_rate / bare["tokens_per_s"] >= 0.9,
            "outside_share<=0.10": outside <= 0.10,
        },
    }
    write_report(report, Path(args.out))


if __name__ == "__main__":
    main()
