"""The learner's peak memory and step time per setting, each setting in a fresh process.

    .venv/bin/python -m benchmarks.micro.learner_memory [--repeats 2] [--fresh-shapes] [--settings NAME ...] [key=value ...]

One `PolicyLearner.train_step` on the default job's batch shape (`learner_profile.default_job_batch`:
32 sequences, chat-template prompts, responses of 8–64 tokens), in-process, no Ray. A setting is a
list of config overrides; every setting runs in its own subprocess, so each peak RSS
(`ru_maxrss`) is that setting's alone. Prints JSON (and writes --out) with, per setting:

- `rss_after_init_mb`: the process after the model, DeepSpeed and the optimizer are built;
- `peak_rss_mb`: the highest RSS through a warm-up and `--repeats` train steps;
- `train_step_s`: the median step, and its ratio to the first setting's;
- `rss_after_steps_mb`: the resident set after each step (the learner trims the heap after a step);
- `micro_batch_sizes_per_step`: each step's split, the warm-up's first (new with each step's lengths
  under `--fresh-shapes`; `micro_batch_sizes` is the repeated batch's).

With `--fresh-shapes` every step draws new response lengths, as a run does, so the GEMMs meet new
row counts each step; without it every step repeats one batch. A setting's entries may also be
`env:NAME=VALUE`, set before the learner's first GEMM (oneDNN's kernel caches read it then).

Memory is exact; seconds are only comparable within one invocation on a quiet box.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.common import OUT, settings_in_fresh_processes, write_report

SETTINGS = {
    "default": [],  # learner.micro_batch_size=auto: micro-batches cut to activation_memory_gb (rlvr/runtime/sizing.py)
    "budget1.5": ["learner.activation_memory_gb=1.5"],
    "budget0.75": ["learner.activation_memory_gb=0.75"],
    "head-whole": ["learner.head_chunk=0"],
    "mb16": ["learner.micro_batch_size=16"],
    "mb16-head-whole": ["learner.micro_batch_size=16", "learner.head_chunk=0"],
    "mb16-unshared": ["learner.micro_batch_size=16", "learner.share_prompts=false"],
    "mb16-unpacked": ["learner.micro_batch_size=16", "learner.pack_responses=false"],
    "mb8": ["learner.micro_batch_size=8"],
    "mb4": ["learner.micro_batch_size=4"],
    "mb1": ["learner.micro_batch_size=1"],
    "mb16+ckpt": ["learner.micro_batch_size=16", "learner.gradient_checkpointing=true"],
    "mb32+ckpt": ["learner.micro_batch_size=32", "learner.gradient_checkpointing=true"],
    # the libraries' own kernel-cache capacities, against the learner's KERNEL_CACHES
    "kernel-caches-1024": ["env:ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024", "env:LRU_CACHE_CAPACITY=1024"],
    # glibc's sliding mmap threshold, against the learner's `map_large_allocations`
    "glibc-heap": ["learner.mmap_threshold_mb=0"],
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def worker(entries: list[str], repeats: int, fresh_shapes: bool) -> dict:
    import random

    import torch

    from benchmarks.profiles.learner_profile import default_job_batch
    from rlvr.learner.actor import PolicyLearner
    from rlvr.learner.plan import plan_mini_batches
    from rlvr.models import resolve_model_path
    from rlvr.runtime.kernel_caches import KERNEL_CACHES
    from rlvr.runtime.sizing import micro_batching
    from rlvr.types import Trajectory

    overrides = [e for e in entries if not e.startswith("env:")]
    os.environ.update(e[4:].split("=", 1) for e in entries if e.startswith("env:"))
    cfg, base_cfg, update, seqs, batch = default_job_batch(32, overrides)
    split = micro_batching(cfg, resolve_model_path(cfg.model.path, cfg.cache_dir))
    vocab = 1 + max(int(s.response_ids.max()) for s in seqs)  # the batch's tokens came from the tokenizer's whole vocabulary

    def step_batch(k: int):
        if not fresh_shapes:
            return batch
        rng = random.Random(k)
        fresh = [Trajectory(s.prompt_ids, [rng.randrange(vocab) for _ in range(rng.randint(8, 64))], advantage=rng.choice([-1.0, 1.0]))
                 for s in seqs]
        return plan_mini_batches(fresh, 1, 1, split, seed=k)[0]

    torch.set_num_threads(cfg.rollout.threads)
    learner = PolicyLearner.__ray_actor_class__(replace(base_cfg, threads=cfg.rollout.threads), 0, 1, "127.0.0.1", 29700)
    after_init = rss_mb()
    times, after_steps, splits = [], [], []
    for k in range(repeats + 1):  # step 0 is the warm-up (first-call allocations), not timed
        b = step_batch(k)
        start = time.perf_counter()
        learner.train_step(b, update)
        if k:
            times.append(time.perf_counter() - start)
        after_steps.append(rss_mb())
        splits.append([len(mb) for mb in b[0].micro_batches])
    return {
        "entries": entries,
        "rss_after_init_mb": after_init,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_step_s": statistics.median(times),
        "rss_after_steps_mb": after_steps,
        "kernel_caches": {name: os.environ.get(name) for name in KERNEL_CACHES},  # as the learner left them
        "micro_batch_sizes": [len(mb) for mb in batch[0].micro_batches],
        "micro_batch_sizes_per_step": splits,
    }


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "fresh")))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--fresh-shapes", action="store_true", help="new response lengths every step, as in a run")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), help="the first is the reference")
    ap.add_argument("--out", type=Path, default=OUT / "learner_memory.json")
    ap.add_argument("overrides", nargs="*", help="added to every setting, e.g. model.train_dtype=float32")
    args = ap.parse_args()

    report: dict = {"common_overrides": args.overrides, "fresh_shapes": args.fresh_shapes, "load_average_before": os.getloadavg()}
    report["settings"] = settings_in_fresh_processes(__spec__.name, SETTINGS, args.settings, args.overrides,
                                                     [str(args.repeats), "fresh" if args.fresh_shapes else "same"],
                                                     {"peak_vs_first": "peak_rss_mb", "time_vs_first": "train_step_s"})
    write_report(report, args.out)


if __name__ == "__main__":
    main()
