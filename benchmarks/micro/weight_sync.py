"""Bucketed weight sync against one tensor at a time, same model, same run.

    .venv/bin/python -m benchmarks.micro.weight_sync [--layers 48] [--repeats 5] [--engine vllm]

Builds a random-init Llama with several hundred tensors (48 layers: 434), starts one DeepSpeed
learner and one rollout engine on Ray, then alternates syncs:
- `bucketed`: the `ray` backend with `learner.bucket_mb` buckets (512 MB: the whole model here);
- `per_tensor`: the same backend with one object-store entry per tensor (bucket_mb=0), the way
  a naive sync ships weights;
plus, for reference, the `nccl` (gloo on CPU) and `ipc` backends bucketed.
Alternating the modes inside one run is what makes the ratio meaningful on a noisy machine.
Writes JSON to stdout and --out: median seconds per mode, GB/s, and per_tensor / bucketed
(target >= 3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from benchmarks.common import ROOT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--bucket-mb", type=float, default=512)
    ap.add_argument("--out", default="benchmarks/out/weight_sync.json")
    args = ap.parse_args()

    from dataclasses import replace

    import ray

    from rlvr.config import compose
    from rlvr.learner.actor import PolicyLearner
    from rlvr.models import build_tiny_model, default_cache_dir
    from rlvr.rollout.pool import RolloutEngine
    from rlvr.runtime.placement import node_address
    from rlvr.runtime.roles import engine_config, learner_config
    from rlvr.weight_sync import connect, sync_weights

    cache = default_cache_dir()
    model_path = str(
        build_tiny_model(
            cache / "models" / f"sync-bench-l{args.layers}-h{args.hidden}",
            num_layers=args.layers,
            hidden_size=args.hidden,
            intermediate_size=2 * args.hidden,
            num_heads=args.hidden // 64,
        )
    )
    cfg = compose(["model=tiny-random", f"rollout={args.engine}"])
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2", "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions")}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    host, port = ray.get(node_address.remote())
    learner = PolicyLearner.options(num_cpus=0.1).remote(
        replace(learner_config(cfg, model_path), threads=2, bucket_mb=args.bucket_mb), 0, 1, host, port
    )
    engine = RolloutEngine.options(num_cpus=0.1).remote(replace(engine_config(cfg, model_path), max_model_len=256))
    ray.get([learner.__ray_ready__.remote(), engine.weight_version.remote()])
    connect("nccl", [learner], [engine], ray.get(node_address.remote()))
    specs = ray.get(learner.bucket_specs.remote(0))

    modes = {
        "bucketed": ("ray", args.bucket_mb),
        "per_tensor": ("ray", 0),
        "nccl_bucketed": ("nccl", args.bucket_mb),
        "ipc_bucketed": ("ipc", args.bucket_mb),
    }
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    version = 0
    for rep in range(args.repeats + 1):  # the first round warms caches and is dropped
        for mode, (backend, bucket_mb) in modes.items():
            version += 1
            m = sync_weights(backend, [learner], [engine], version, bucket_mb=bucket_mb)
            if rep:
                runs[mode].append(m)
        print(f"round {rep}/{args.repeats} done", file=sys.stderr, flush=True)

    nbytes = runs["bucketed"][0]["sync/bytes"]
    result = {
        "model": {"layers": args.layers, "hidden": args.hidden, "tensors": len(specs), "bytes": nbytes},
        "engine": args.engine,
        "bucket_mb": args.bucket_mb,
        "repeats": args.repeats,
        "modes": {
            mode: {
                "seconds_median": statistics.median(r["time/sync"] for r in rs),
                "engine_load_seconds_median": statistics.median(r["sync/load_s"] for r in rs),
                "gb_per_s_median": statistics.median(r["sync/gb_per_s"] for r in rs),
            }
            for mode, rs in runs.items()
        },
    }
    sec = {m: v["seconds_median"] for m, v in result["modes"].items()}
    result["per_tensor_over_bucketed"] = sec["per_tensor"] / sec["bucketed"]
    result["target_met"] = result["per_tensor_over_bucketed"] >= 3.0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
