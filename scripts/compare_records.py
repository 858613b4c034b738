"""Two run dirs compared record by record: metrics.jsonl, decisions.jsonl and eval.jsonl.

For a change that must not change behaviour (a refactor): run the default job for a few steps
before and after it, then `python scripts/compare_records.py RUN_BEFORE RUN_AFTER`. Timings and the
processes' memory are left out; any other value that differs (beyond a relative 1e-6) is listed. Prints JSON.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

FILES = ("metrics.jsonl", "decisions.jsonl", "eval.jsonl")
TIMINGS = ("sync/gb_per_s", "sync/load_s", "learner/seconds", "gen_tokens_per_s")


def is_timing(key: str) -> bool:
    """Seconds, rates and memory (learner/peak_rss_mb, rollout/rss_mb, ...): the machine's, not the run's."""
    return key.startswith("time/") or key.endswith(("seconds", "_s", "rss_mb")) or key in TIMINGS


def load(run: Path, name: str) -> list[dict]:
    path = run / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def differences(before: list[dict], after: list[dict]) -> tuple[list[tuple], float]:
    diffs, max_rel = [], 0.0
    for x, y in zip(before, after):
        for key in sorted(set(x) | set(y)):
            u, v = x.get(key), y.get(key)
            if is_timing(key) or u == v:
                continue
            if isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v):
                continue
            if isinstance(u, (int, float)) and isinstance(v, (int, float)):
                rel = abs(u - v) / max(abs(u), abs(v), 1e-12)
                max_rel = max(max_rel, rel)
                if rel <= 1e-6:
                    continue
            diffs.append((x.get("step"), key, u, v))
    return diffs, max_rel


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    report = {}
    for name in FILES:
        a, b = load(before, name), load(after, name)
        diffs, max_rel = differences(a, b)
        report[name] = {"records": [len(a), len(b)], "differing": len(diffs), "max_rel_diff": max_rel, "first": diffs[:8]}
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
