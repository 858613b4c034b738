"""The V0 value backend on CPU: predictions per second with 256 context items and 8 targets a step.

No network here, so the model is V0's published shape with random weights
(:func:`rlvr.value.v0.write_random_v0` with ``published_size=True``): a Qwen3 backbone of
Qwen3-Embedding-0.6B's shape (28 layers, width 1024, float32), the adapter at the published
dimensions, and a TabPFN classifier of the package's default architecture.  The cost does not
depend on the weights.  The tokenizer is SmolLM2's (the default job's), so token counts are close
to, not equal to, Qwen's.

What a V0.5 step asks of the value server, on data=mix questions:
  cold:   the first prediction with a full context (256 prompts encoded, then the head);
  steady: each later step predicts 8 new prompts and adds them to the context (the context's
          embeddings are cached, so only the 8 are encoded; the head is refit every call, as V0 does).
The same steps run through the embedded backend (MiniLM + ridge) in the same invocation, and the
JSON gives the ratio, since this box's speed varies from run to run.

Usage: python -m benchmarks.micro.v0_value [--steps 3] [--context 256] [--targets 8] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from rlvr.config import compose
from rlvr.data import load_problems
from rlvr.models import default_cache_dir, resolve_model_path
from rlvr.value import EmbeddedValueModel, V0ValueModel
from rlvr.value.v0 import write_random_v0


def questions(n: int) -> list[str]:
    cfg = compose(["data=mix", f"data.train.size={n}"])
    return [p.question for p in load_problems(cfg.data.train)][:n]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_backend(model, context: list[str], steps: list[list[str]]) -> dict:
    success = [(i % 5) / 4 for i in range(len(context))]  # a spread of success rates, both labels
    name = type(model).__name__
    print(f"[v0_value] {name}: encoding {len(context)} context prompts ...", file=sys.stderr, flush=True)
    _, t_ctx = timed(lambda: model.add_context(context, success))
    print(f"[v0_value] {name}: {t_ctx:.1f} s; {len(steps)} predictions of {len(steps[0])} prompts ...", file=sys.stderr, flush=True)
    _, t_cold = timed(lambda: model.predict(steps[0]))
    steady = []
    for targets in steps[1:]:
        _, t = timed(lambda: model.predict(targets))
        model.add_context(targets, [0.5] * len(targets))
        steady.append(t)
    per_step = sorted(steady)[len(steady) // 2]
    return {
        "context_encode_s": round(t_ctx, 3),
        "cold_predict_s": round(t_cold, 3),
        "steady_predict_s": [round(t, 3) for t in steady],
        "steady_median_s": round(per_step, 3),
        "predictions_per_s": round(len(steps[1]) / per_step, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="steady steps after the cold one")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    files_dir = default_cache_dir() / "v0-random-published"
    marker = files_dir / "files.json"
    if not marker.is_file():
        print("[v0_value] writing a published-size random V0 (once) ...", file=sys.stderr, flush=True)
        files = write_random_v0(files_dir, resolve_model_path("smollm2-135m"), published_size=True)
        marker.write_text(json.dumps(files))
    files = json.loads(marker.read_text())

    prompts = questions(args.context + args.targets * (args.steps + 1))
    context, rest = prompts[: args.context], prompts[args.context :]
    steps = [rest[i * args.targets : (i + 1) * args.targets] for i in range(args.steps + 1)]

    v0, t_load = timed(lambda: V0ValueModel(**files, context_size=args.context))
    params = sum(p.numel() for p in v0.encoder.parameters())
    print(f"[v0_value] V0 loaded in {t_load:.1f} s ({params / 1e6:.0f} M encoder parameters)", file=sys.stderr, flush=True)
    result_v0 = run_backend(v0, context, steps)
    # how a steady step splits between encoding 8 prompts and the head
    fresh = rest[-args.targets :]
    v0._ctx._cache.clear()
    _, t_encode = timed(lambda: v0._encode(fresh))
    result_v0["steady_encode_s"] = round(t_encode, 3)
    result_v0["steady_head_s"] = round(max(0.0, result_v0["steady_median_s"] - t_encode), 3)
    result_v0["load_s"] = round(t_load, 1)
    result_v0["encoder_params_m"] = round(params / 1e6, 1)
    v0 = None  # free the 2 GB encoder before the embedded run

    embedded = EmbeddedValueModel(context_size=args.context, regressor="ridge")
    result_emb = run_backend(embedded, context, steps)

    result = {
        "context": args.context,
        "targets_per_step": args.targets,
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "v0": result_v0,
        "embedded": result_emb,
        "v0_over_embedded_steady": round(result_v0["steady_median_s"] / result_emb["steady_median_s"], 1),
        "command": "python " + " ".join(sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "v0_value.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
