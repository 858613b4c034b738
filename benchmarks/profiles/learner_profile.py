"""Where the learner's step goes: a torch.profiler pass over one real `PolicyLearner.train_step`.

    .venv/bin/python -m benchmarks.profiles.learner_profile [--sequences 32] [--repeats 3] [key=value ...]

The learner class runs in this process (no Ray), built from the config tree like the trainer's, on
one batch shaped like the default job's: `data=mix` prompts rendered with the chat template and the
one-shot example, n = 4 per prompt, response lengths drawn from 8–64 tokens (the job's mean is
20–25, its cap 96). Prints JSON (and writes --out):

- the profile's top operators by self CPU time, and the shares of matmuls, the LM head's
  log-softmax, the optimizer and everything else;
- padding: the share of positions in the collated micro-batches that are padding;
- torch threads: train_step seconds at 1 and at `rollout.threads` threads;
- DeepSpeed at ZeRO-0 against a plain `torch.optim.AdamW` step on the same parameters;
- train_step seconds with float32 and with `model.train_dtype=bfloat16` (autocast).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.common import OUT, median_seconds, write_report


def default_job_batch(sequences: int, overrides: list[str]):
    """The default job's config, learner config and update, and one batch shaped like its batches:
    `data=mix` prompts rendered as the trainer renders them, n per prompt, random responses of
    8–64 tokens with ±1 advantages, split into micro-batches as the trainer splits them."""
    import random

    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from rlvr.config import algorithm_preset, compose
    from rlvr.data import PromptStream, load_problems, prompt_renderer
    from rlvr.learner.plan import plan_mini_batches
    from rlvr.models import resolve_model_path
    from rlvr.runtime.roles import learner_config
    from rlvr.runtime.sizing import micro_batching
    from rlvr.train.loop import update_config
    from rlvr.types import Trajectory

    cfg = compose(["algorithm=grpo", *overrides])
    model_path = resolve_model_path(cfg.model.path, cfg.cache_dir)
    render = prompt_renderer(cfg, model_path)
    tok = AutoTokenizer.from_pretrained(model_path)
    stream = PromptStream(load_problems(OmegaConf.to_container(cfg.data.train, resolve=True)), seed=0)
    rng = random.Random(0)
    n = cfg.algorithm.n
    prompts = [tok(render(p))["input_ids"] for p in stream.next(sequences // n)]
    seqs = [
        Trajectory(ids, [rng.randrange(tok.vocab_size) for _ in range(rng.randint(8, 64))], advantage=rng.choice([-1.0, 1.0]))
        for ids in prompts
        for _ in range(n)
    ]
    base_cfg = learner_config(cfg, model_path)
    batch = plan_mini_batches(seqs, 1, 1, micro_batching(cfg, model_path), seed=0)[0]
    return cfg, base_cfg, update_config(cfg, algorithm_preset(cfg.algorithm)), seqs, batch


def median_step_seconds(learner, batch, update, repeats: int) -> float:
    """The median of `repeats` `train_step` calls after one warm-up (first-call allocations)."""
    learner.train_step(batch, update)
    return median_seconds(lambda: learner.train_step(batch, update), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT / "learner_profile.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    import torch

    from rlvr.learner.actor import PolicyLearner
    from rlvr.learner.forward import collate

    cfg, base_cfg, update, seqs, batch = default_job_batch(args.sequences, args.overrides)
    micro = batch[0].micro_batches
    Learner = PolicyLearner.__ray_actor_class__
    port = [29600]

    def learner(**fields):
        port[0] += 1
        return Learner(replace(base_cfg, **{"train_dtype": "float32", **fields}), 0, 1, "127.0.0.1", port[0])

    def step_seconds(l) -> float:
        return median_step_seconds(l, batch, update, args.repeats)

    threads = cfg.rollout.threads
    report: dict = {"sequences": len(seqs), "micro_batch_sizes": [len(m) for m in micro], "load_average_before": os.getloadavg()}

    # padding in the collated micro-batches
    real = pad = 0
    for m in micro:
        c = collate(m, 0, torch.device("cpu"))
        computed = c.prompt_mask.numel() + c.response_ids.numel()  # positions the forward runs on
        real += int(c.prompt_mask.sum()) + int(c.mask.sum())
        pad += computed - int(c.prompt_mask.sum()) - int(c.mask.sum())
    report["padding_share"] = pad / (real + pad)
    report["tokens_per_sequence"] = {"prompt_mean": statistics.mean(len(t.prompt_ids) for t in seqs), "response_mean": statistics.mean(len(t.response_ids) for t in seqs)}

    # the profile, at the job's threads
    torch.set_num_threads(threads)
    l = learner(threads=threads)
    l.train_step(batch, update)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        l.train_step(batch, update)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    report["top_ops_self_cpu_share"] = {e.key: round(e.self_cpu_time_total / total, 4) for e in top}
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"))
    softmax = sum(e.self_cpu_time_total for e in events if "softmax" in e.key)
    optim = sum(e.self_cpu_time_total for e in events if "adam" in e.key.lower() or e.key in ("aten::_foreach_mul_", "aten::_foreach_add_", "aten::_foreach_addcdiv_", "aten::_foreach_addcmul_", "aten::_foreach_sqrt", "aten::_foreach_div_", "aten::_foreach_lerp_"))
    report["shares"] = {"matmul": matmul / total, "softmax": softmax / total, "optimizer": optim / total, "other": 1 - (matmul + softmax + optim) / total}

    report["train_step_s"] = {f"threads_{threads}_float32": step_seconds(l)}
    # DeepSpeed's optimizer step against a plain torch AdamW on the same parameters
    params = [p for p in l.engine.module.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    start = time.perf_counter()
    for _ in range(args.repeats):
        l.engine.step()
    ds_step = (time.perf_counter() - start) / args.repeats
    plain = torch.optim.AdamW(params, lr=1e-5)
    for p in params:  # DeepSpeed's step cleared them
        p.grad = torch.randn_like(p) * 1e-3
    plain.step()
    start = time.perf_counter()
    for _ in range(args.repeats):
        plain.step()
    report["optimizer_step_s"] = {"deepspeed_zero0": ds_step, "torch_adamw": (time.perf_counter() - start) / args.repeats}
    del l, plain, params

    bf16 = learner(threads=threads, train_dtype="bfloat16")
    report["train_step_s"][f"threads_{threads}_bfloat16"] = step_seconds(bf16)
    del bf16
    torch.set_num_threads(1)
    one = learner(threads=1)
    report["train_step_s"]["threads_1_float32"] = step_seconds(one)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
