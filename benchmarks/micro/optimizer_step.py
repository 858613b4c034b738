"""One AdamW step over the default model's parameters: torch's three CPU implementations.

    .venv/bin/python -m benchmarks.micro.optimizer_step [--repeats 7] [key=value ...]

The learner steps with `torch.optim.AdamW(fused=True)` (`rlvr.learner.actor.deepspeed_config`); on
CPU torch's default is the per-tensor loop (`foreach=False`). Each implementation gets the model's
float32 parameters (`model.*` from the config tree, smollm2-135m by default), random gradients and the
learner's betas, weight decay and thread count; after a warm-up step (which allocates the state), the
median of `--repeats` steps. The implementations alternate within each repeat, so they see the same
load. Prints JSON (and writes --out): seconds per step, each ÷ the fused step's, and the largest
difference of the parameters after the steps from the per-tensor loop's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchmarks.common import OUT, write_report

KINDS = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=OUT / "optimizer_step.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from rlvr.config import compose
    from rlvr.models import resolve_model_path
    from rlvr.runtime.roles import learner_config

    cfg = compose(args.overrides)
    learner = learner_config(cfg, resolve_model_path(cfg.model.path, cfg.cache_dir))
    torch.set_num_threads(learner.threads)
    torch.manual_seed(0)
    weights = [p.detach() for p in AutoModelForCausalLM.from_pretrained(learner.model_path, dtype=torch.float32).parameters()]
    grads = [torch.randn_like(w) * 1e-3 for w in weights]
    optimizers, params = {}, {}
    for kind, flags in KINDS.items():
        params[kind] = [torch.nn.Parameter(w.clone()) for w in weights]
        for p, g in zip(params[kind], grads):
            p.grad = g
        optimizers[kind] = torch.optim.AdamW(params[kind], lr=learner.lr, betas=tuple(learner.betas), weight_decay=learner.weight_decay, **flags)
        optimizers[kind].step()  # warm-up: allocates the moments
    seconds: dict[str, list[float]] = {kind: [] for kind in KINDS}
    load_before = os.getloadavg()
    for r in range(args.repeats):
        for kind in list(KINDS) if r % 2 == 0 else list(KINDS)[::-1]:
            start = time.perf_counter()
            optimizers[kind].step()
            seconds[kind].append(time.perf_counter() - start)
    median = {kind: statistics.median(s) for kind, s in seconds.items()}
    write_report({
        "model": cfg.model.path, "parameters": sum(w.numel() for w in weights), "threads": learner.threads, "repeats": args.repeats,
        "load_average_before": load_before, "seconds": median, "all_seconds": seconds,
        "vs_fused": {kind: s / median["fused"] for kind, s in median.items()},
        "max_abs_diff_from_per_tensor": {kind: max(float((a - b).detach().abs().max()) for a, b in zip(params[kind], params["per-tensor"])) for kind in KINDS},
        "load_average_after": os.getloadavg(),
    }, args.out)


if __name__ == "__main__":
    main()
