"""What the driver repeats every step, at a cluster job's scale, in this checkout and (optionally) at another commit.

    .venv/bin/python -m benchmarks.micro.driver_overhead [--prompts 256] [--n 16] [--rows 100000] [--against REV]

Work the trainer's process does between generation and learning, which a GPU job waits for:
- `split`: one step's rollouts (`--prompts` × `--n`, prompts of 200–400 tokens, answers of 20–500)
  cut into micro-batches by memory (`plan_mini_batches` with an `ActivationBudget` of
  `--activation-gb` for SmolLM2-135M in bf16);
- `stream_state`: the prompt stream's state a step records, over `--rows` problems;
- `env_calls`: `--prompts` × `--n` environment step() calls through the run's deadline wrapper,
  and what the wrapper adds to each call (a multi-turn run pays it per answer and per episode).

With `--against REV` the same measurements run on REV's `rlvr` (a temporary `git worktree`, in a
subprocess), then on this checkout's, and the report gives ours ÷ theirs for each. Prints JSON
(and writes --out). Seconds are medians of `--repeats`; compare them only within one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def measure(prompts: int, n: int, rows: int, repeats: int, activation_gb: float) -> dict:
    """The three costs on whichever `rlvr` this process imports (no import is older than 2026-12-04)."""
    from benchmarks.common import median_seconds
    from rlvr.config import compose
    from rlvr.data import Problem
    from rlvr.data.stream import PromptStream
    from rlvr.envs import WithDeadline
    from rlvr.learner.plan import plan_mini_batches
    from rlvr.runtime.sizing import ActivationBudget, ModelShape, activation_bytes_per_position
    from rlvr.types import Trajectory

    cfg = compose([])
    rng = random.Random(0)
    rollouts = []
    for _ in range(prompts):
        prompt = [rng.randrange(1000) for _ in range(rng.randrange(200, 400))]
        rollouts += [Trajectory(prompt, [1] * rng.randrange(20, 500)) for _ in range(n)]
    smollm2 = ModelShape(layers=30, hidden=576, intermediate=1536, kv_heads=3, head_dim=64, vocab=49152)
    per_position, per_response = activation_bytes_per_position(smollm2, "bfloat16")
    budget = ActivationBudget(activation_gb * 2**30, per_position, per_response, True, True, cfg.learner.head_chunk)
    micro = [len(m) for m in plan_mini_batches(rollouts, 1, 1, budget, 0)[0][0].micro_batches]

    problems = [Problem(f"file:train:{i}", f"What is {i} + {i + 1}? " * 20, str(2 * i + 1)) for i in range(rows)]
    stream = PromptStream(problems, seed=0)

    class Env:
        tools: list = []

        def reset(self, problem, messages):
            return messages

        def step(self, messages, scores):
            return None

    env, wrapped = Env(), WithDeadline(Env(), 600, "bench")
    calls = prompts * n
    direct = median_seconds(lambda: [env.step([], []) for _ in range(calls)], repeats)
    through = median_seconds(lambda: [wrapped.step([], []) for _ in range(calls)], repeats)
    return {
        "split_s": median_seconds(lambda: plan_mini_batches(rollouts, 1, 1, budget, 0), repeats),
        "micro_batches": len(micro),
        "stream_state_s": median_seconds(stream.state_dict, repeats),
        "env_calls_s": through,
        "env_call_overhead_us": (through - direct) / calls * 1e6,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--activation-gb", type=float, default=16.0, help="a learner's activation budget (a GPU's share)")
    ap.add_argument("--against", help="a git revision whose rlvr to measure too")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)  # the --against subprocess
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "driver_overhead.json")
    args = ap.parse_args(argv)
    if args.measure_only:
        print(json.dumps(measure(args.prompts, args.n, args.rows, args.repeats, args.activation_gb)))
        return {}

    from benchmarks.common import write_report

    report: dict = {"prompts": args.prompts, "n": args.n, "rows": args.rows, "repeats": args.repeats, "activation_gb": args.activation_gb}
    if args.against:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.against], cwd=ROOT, check=True, capture_output=True)
            try:
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--measure-only", "--prompts", str(args.prompts), "--n", str(args.n),
                     "--rows", str(args.rows), "--repeats", str(args.repeats), "--activation-gb", str(args.activation_gb)],
                    cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        report["against"] = args.against
        report["theirs"] = json.loads(done.stdout.strip().splitlines()[-1])
    report["ours"] = measure(args.prompts, args.n, args.rows, args.repeats, args.activation_gb)
    if args.against:
        report["ours_over_theirs"] = {k: report["ours"][k] / max(report["theirs"][k], 1e-9)
                                      for k in ("split_s", "stream_state_s", "env_calls_s")}
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
