"""The vLLM engine's decode rate and memory per CPU setting, each setting in a fresh process.

    .venv/bin/python -m benchmarks.micro.engine_settings [--prompts 128] [--max-tokens 64] [--settings NAME ...] [key=value ...]

One `VLLMEngine.generate` call (rlvr's engine, built by `rlvr.runtime.roles.engine_config` from the config
tree) on `--prompts` distinct `data=mix` prompts rendered as the trainer renders them, one answer
each, at the default temperature, after a warm-up call on 8 of them. A setting is a list of
`rollout.*` overrides; each runs in its own subprocess, so each memory figure is that engine's
alone. Prints JSON (and writes --out) with, per setting: the KV cache it was given, seconds,
generated tokens, tokens per second (and its ratio to the first setting's), the resident set at the
end and its peak (`VmHWM`).

Tokens per second are only comparable within one invocation on a quiet box.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.common import OUT, settings_in_fresh_processes, write_report

SETTINGS = {
    "default": [],
    "vllm-cpu-defaults": ["rollout.max_num_seqs=256", "rollout.block_size=128", "rollout.kv_cache_gb=1"],
    "block128": ["rollout.block_size=128"],
    "block64": ["rollout.block_size=64"],
    "seqs16": ["rollout.max_num_seqs=16"],
    "seqs32": ["rollout.max_num_seqs=32"],
    "seqs128": ["rollout.max_num_seqs=128"],
    "kv1gb": ["rollout.kv_cache_gb=1"],
    "float32": ["model.rollout_dtype=float32"],
    "bfloat16": ["model.rollout_dtype=bfloat16"],
}


def status_mb() -> dict:
    with open("/proc/self/status") as f:
        return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in f if line.startswith(("VmRSS", "VmHWM"))}


def worker(overrides: list[str], prompts: int, max_tokens: int) -> dict:
    from omegaconf import OmegaConf

    from rlvr.config import compose
    from rlvr.data import load_problems, prompt_renderer
    from rlvr.models import resolve_model_path
    from rlvr.rollout.engines import SamplingConfig
    from rlvr.rollout.vllm_engine import VLLMEngine
    from rlvr.runtime.roles import engine_config
    from rlvr.types import GenerationRequest

    cfg = compose(overrides)
    model_path = resolve_model_path(cfg.model.path, cfg.cache_dir)
    render = prompt_renderer(cfg, model_path, as_ids=True)
    problems = load_problems(OmegaConf.to_container(cfg.data.train, resolve=True))[:prompts]
    requests = [GenerationRequest(i, render(p), 1) for i, p in enumerate(problems)]
    engine_cfg = engine_config(cfg, model_path)
    import torch

    torch.set_num_threads(engine_cfg.threads)
    engine = VLLMEngine(engine_cfg)
    sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=max_tokens)
    engine.generate(requests[:8], sampling)
    start = time.perf_counter()
    out = engine.generate(requests, sampling)
    seconds = time.perf_counter() - start
    tokens = sum(len(s["response_ids"]) for group in out for s in group)
    mem = status_mb()
    return {
        "overrides": overrides,
        "kv_cache_gb": engine_cfg.kv_cache_gb,
        "max_num_seqs": engine_cfg.max_num_seqs,
        "block_size": engine_cfg.block_size,
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "rss_mb": mem["VmRSS"],
        "peak_rss_mb": mem["VmHWM"],
    }


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="the first is the reference")
    ap.add_argument("--out", type=Path, default=OUT / "engine_settings.json")
    ap.add_argument("overrides", nargs="*", help="added to every setting, e.g. model=tiny-random")
    args = ap.parse_args()

    report: dict = {"common_overrides": args.overrides, "prompts": args.prompts, "max_tokens": args.max_tokens,
                    "load_average_before": os.getloadavg()}
    report["settings"] = settings_in_fresh_processes(
        __spec__.name, SETTINGS, args.settings, args.overrides, [str(args.prompts), str(args.max_tokens)],
        {"rate_vs_first": "tokens_per_s", "peak_vs_first": "peak_rss_mb"}, env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    write_report(report, args.out)


if __name__ == "__main__":
    main()
