"""What the benchmarks share. Standard library only: `profiles/gpu_check.py` imports it on a machine
without rlvr's dependencies, and `micro/vs_trl.py` in TRL's own virtual environment."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"  # scratch output; what docs/benchmarks.md reads is copied to benchmarks/results
RESULTS = ROOT / "benchmarks" / "results"


def median_seconds(fn, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn`` (warm it up first where its first call differs)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_report(report: dict, out: Path) -> None:
    """Stamp the load average after the run, write `out`, print the JSON."""
    report["load_average_after"] = os.getloadavg()
    text = json.dumps(report, indent=2, default=str)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


def settings_in_fresh_processes(module: str, settings: dict[str, list[str]], names: list[str], common: list[str],
                                 worker_args: list[str], relative: dict[str, str], env: dict | None = None) -> dict[str, dict]:
    """Run `python -m module --worker JSON(common + settings[name]) *worker_args` for each name, each in its
    own process (so each memory figure is that setting's alone): {name: the worker's JSON}, with each
    `relative` key (new name -> measured key) as the ratio to the first setting's. A setting whose worker
    fails is reported as {"error": ...} (its traceback went to stderr) and the others still run."""
    results: dict[str, dict] = {}
    for name in names:
        print(f"[{module.rsplit('.', 1)[-1]}] {name}", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", module, "--worker", json.dumps([*common, *settings[name]]), *worker_args]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        try:
            if done.returncode:
                raise ValueError(f"the worker exited with {done.returncode}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as e:  # no JSON line, or a failed run
            print(f"[{module.rsplit('.', 1)[-1]}] {name} failed: {e}", file=sys.stderr, flush=True)
            results[name] = {"error": str(e)}
    first = results[names[0]]
    for r in results.values():
        if "error" not in r:
            r.update({ratio: (r[key] / first[key] if "error" not in first else None) for ratio, key in relative.items()})
    return results
