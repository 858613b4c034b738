"""The learner against this machine's own matmul peak (issue "Performance at the limit of the box", part 1).

    .venv/bin/python -m benchmarks.profiles.learner_roofline [--sequences 32] [--repeats 3] [key=value ...]

On one batch shaped like the default job's (`learner_profile.default_job_batch`), with the job's
learner settings (dtype, threads, micro-batch size, shared prompts):

- **the machine's peak**: the FLOP/s torch reaches on the GEMMs the learner's step runs, at their
  real shapes (forward Y = X Wᵀ, and the two backward GEMMs dX = dY W and dW = dYᵀ X of every
  projection and of the LM head, for each micro-batch's prompt and response forwards, padding
  included, as the model runs them), in the learner's compute dtype (bf16 under autocast) and
  thread count; and, for reference, one large square GEMM.
- **the learner's achieved FLOP/s**: forward + backward FLOPs (3x the forward) of a real
  `PolicyLearner.train_step`, counted from the model's shapes and the real token counts: each
  distinct prompt once per micro-batch (the shared prompt forward), each response token, causal
  attention over the keys each token really sees, the LM head on response positions only; no
  padding. Divided by the step's median seconds.
- **the ratio** of the two (target >= 0.6), and where the rest goes: a torch.profiler pass over one
  step split into matmuls, attention, softmax, autocast copies, the optimizer and the rest, and the
  padding share of the positions the forwards run.
Prints JSON and writes --out (benchmarks/out/learner_roofline.json).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from benchmarks.common import OUT, median_seconds, write_report

if TYPE_CHECKING:
    from rlvr.learner.forward import Collated
from benchmarks.profiles.learner_profile import default_job_batch, median_step_seconds

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_addmm_activation")


def dims(config) -> dict:
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"layers": config.num_hidden_layers, "d": config.hidden_size, "ff": config.intermediate_size, "vocab": config.vocab_size,
            "attn": heads * head_dim, "kv": kv_heads * head_dim}


def projections(m: dict) -> list[tuple[int, int]]:
    """(in, out) of every matmul in one decoder layer: q, k, v, o, gate, up, down."""
    d, a, kv, ff = m["d"], m["attn"], m["kv"], m["ff"]
    return [(d, a), (d, kv), (d, kv), (a, d), (d, ff), (d, ff), (ff, d)]


def forward_flops(m: dict, mb: "Collated") -> dict[str, float]:
    """One micro-batch's forward FLOPs on real tokens, as the shared-prompt forward computes them:
    {"matmul": the projections and the LM head, "attention": QKᵀ and AV over the keys each query sees}."""
    per_token = 2 * sum(i * o for i, o in projections(m)) * m["layers"]
    attn = 4 * m["attn"] * m["layers"]  # QKᵀ and AV: 2 FLOPs x 2 products per (query, key) pair and attention width
    prompt_len = mb.prompt_len.tolist()
    matmul = attention = 0.0
    for p in prompt_len:  # each distinct prompt once; causal: position i sees i + 1 keys
        matmul += p * per_token
        attention += attn * p * (p + 1) / 2
    lengths = mb.mask.sum(1).long().tolist()
    for g, t in zip(mb.group_of.tolist(), lengths):
        fed = max(t - 1, 0)  # response tokens fed as inputs; the first is predicted from the prompt's last position
        p = prompt_len[g]
        matmul += fed * per_token + 2 * m["d"] * m["vocab"] * t  # the LM head on response positions
        attention += attn * sum(p + j + 1 for j in range(fed))
    return {"matmul": matmul, "attention": attention}


def gemm_shapes(m: dict, mb: "Collated", packed: bool) -> list[tuple[int, int, int]]:
    """(M, K, N) of every forward GEMM the micro-batch runs, at the shapes it runs them: the prompt
    rows ([G, P] padded, or the real tokens packed), the response rows ([B, T - 1], or the real fed
    tokens packed) and the LM head's ([B, T], or the real tokens packed)."""
    follow = mb.response_ids.shape[1] - 1
    prompt_rows = int(mb.prompt_mask.sum()) if packed else mb.prompt_ids.numel()
    response_rows = mb.packed_ids.numel() if packed else mb.response_ids.shape[0] * follow
    head_rows = len(mb.packed_source) if packed else mb.response_ids.shape[0] * (follow + 1)
    shapes = []
    for rows in (prompt_rows, response_rows):
        if rows:
            shapes += [(rows, i, o) for i, o in projections(m)] * m["layers"]
    shapes.append((head_rows, m["d"], m["vocab"]))
    return shapes


def gemm_seconds(shape: tuple[int, int, int], dtype: torch.dtype, repeats: int) -> float:
    """Median seconds of the forward GEMM and its two backward GEMMs at one shape."""
    rows, k, n = shape
    x, w, dy = torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(rows, n, dtype=dtype)

    def three():
        F.linear(x, w)
        dy @ w
        dy.t() @ x

    three()
    return median_seconds(three, repeats)


def machine_peak(shapes: list[tuple[int, int, int]], dtype: torch.dtype, repeats: int) -> dict:
    counts: dict[tuple[int, int, int], int] = {}
    for s in shapes:
        counts[s] = counts.get(s, 0) + 1
    flops = seconds = 0.0
    for s, count in counts.items():
        flops += 3 * 2 * s[0] * s[1] * s[2] * count
        seconds += gemm_seconds(s, dtype, repeats) * count
    square = torch.randn(2048, 2048, dtype=dtype)
    square @ square
    start = time.perf_counter()
    for _ in range(repeats):
        square @ square
    square_s = (time.perf_counter() - start) / repeats
    return {"at_learner_shapes_flops": flops / seconds, "gemm_seconds_per_step": seconds, "distinct_shapes": len(counts),
            "square_2048_flops": 2 * 2048**3 / square_s}


def profile_shares(learner, batch, update) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        learner.train_step(batch, update)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups = {"matmul": lambda k: k in MATMUL_OPS, "attention": lambda k: "attention" in k or "sdpa" in k,
              "softmax": lambda k: "softmax" in k, "autocast_copies": lambda k: k in ("aten::_to_copy", "aten::copy_"),
              "optimizer": lambda k: "adam" in k.lower() or k.startswith("aten::_foreach")}
    shares = {name: sum(e.self_cpu_time_total for e in events if test(e.key)) / total for name, test in groups.items()}
    shares["other"] = 1 - sum(shares.values())
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {"shares": shares, "top_ops": {e.key: round(e.self_cpu_time_total / total, 4) for e in top}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT / "learner_roofline.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    from rlvr.learner.actor import PolicyLearner
    from rlvr.learner.forward import collate, padding_share, positions

    cfg, base_cfg, update, seqs, batch = default_job_batch(args.sequences, args.overrides)
    threads = cfg.rollout.threads
    torch.set_num_threads(threads)
    learner = PolicyLearner.__ray_actor_class__(replace(base_cfg, threads=threads), 0, 1, "127.0.0.1", 29650)
    m = dims(learner.engine.module.config)
    dtype = torch.bfloat16 if base_cfg.train_dtype == "bfloat16" else torch.float32
    micro = [collate(mb, 0, torch.device("cpu")) for mini in batch for mb in mini.micro_batches]
    step_flops = 3 * sum(sum(forward_flops(m, mb).values()) for mb in micro)
    packed = base_cfg.share_prompts and base_cfg.pack_responses
    shapes = [s for mb in micro for s in gemm_shapes(m, mb, packed)]

    report: dict = {"sequences": len(seqs), "micro_batches": len(micro), "micro_batch_sizes": [len(mb) for mini in batch for mb in mini.micro_batches], "packed": packed,
                    "dtype": str(dtype), "threads": threads, "model": m, "load_average_before": os.getloadavg(),
                    "padding_share": padding_share([positions(mb, packed) for mb in micro]), "step_flops": step_flops}
    report["train_step_s"] = median_step_seconds(learner, batch, update, args.repeats)
    report["learner_flops"] = step_flops / report["train_step_s"]
    report["machine"] = machine_peak(shapes, dtype, args.repeats)
    report["ratio_to_peak_at_shapes"] = report["learner_flops"] / report["machine"]["at_learner_shapes_flops"]
    report["ratio_to_square_gemm"] = report["learner_flops"] / report["machine"]["square_2048_flops"]
    # the GEMMs at peak would take gemm_seconds_per_step: the rest of the step is what the profile splits
    report["gemm_share_at_peak"] = report["machine"]["gemm_seconds_per_step"] / report["train_step_s"]
    report["profile"] = profile_shares(learner, batch, update)
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
