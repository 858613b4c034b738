"""The code sandbox's cost: the same programs run with bubblewrap and without, as a ratio in one run.

Each item is a program with its tests, scored by ``code_tests`` (one execution per test). The
unsandboxed side runs the same harness with the same interpreter (``/usr/bin/python3 -I -S``) and
the same files, written to a fresh temporary directory, with no walls: the difference is what
bwrap costs. Measured one execution at a time (per-execution overhead, interleaved so that load
on the box hits both sides alike) and through the real pool (items per second, ``--workers``).

Prints JSON and writes it to --out (default benchmarks/results/sandbox.json).

Usage: python -m benchmarks.micro.sandbox [--executions 200] [--items 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

from benchmarks.common import RESULTS
from rlvr.rewards.code import STDIO_HARNESS as _HARNESS
from rlvr.sandbox import ProcessVerifier, RewardSpec, ScoreRequest, bubblewrap
from rlvr.sandbox.bubblewrap import INTERPRETER, Limits, probe, run

PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
TESTS = json.dumps({"inputs": [f"{i} {i + 1}\n" for i in range(3)], "outputs": [f"{2 * i + 1}\n" for i in range(3)]})


def bare_execution(stdin: bytes) -> float:
    """The harness and program run directly: a temp dir instead of the tmpfs, no namespaces."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for name, data in (("harness.py", _HARNESS.decode().replace("/sandbox/", d + "/")), ("program.py", PROGRAM)):
            with open(os.path.join(d, name), "w") as f:
                f.write(data)
        subprocess.run([INTERPRETER, "-I", "-S", os.path.join(d, "harness.py")], input=stdin,
                       capture_output=True, cwd=d, timeout=10, check=True)
    return time.perf_counter() - t0


def sandboxed_execution(stdin: bytes) -> float:
    t0 = time.perf_counter()
    got = run([INTERPRETER, "-I", "-S", "/sandbox/harness.py"],
              {"/sandbox/harness.py": _HARNESS, "/sandbox/program.py": PROGRAM.encode()}, stdin, Limits())
    assert got.status == "exited" and got.returncode == 0, got
    return time.perf_counter() - t0


def per_execution(n: int) -> dict:
    """Bare, sandboxed, and (where the sandbox makes cgroups) sandboxed on its rlimits alone."""
    bare, walled, rlimits_only = [], [], []
    with_cgroups = bool(bubblewrap.cgroup_parents())
    for i in range(n):  # interleaved, in turns: load on the box and what one run leaves hit all alike
        stdin = f"{i} {i}\n".encode()
        bare.append(bare_execution(stdin))

        def without_cgroups() -> None:
            bubblewrap._cgroups_off = True
            try:
                rlimits_only.append(sandboxed_execution(stdin))
            finally:
                bubblewrap._cgroups_off = False

        if with_cgroups and i % 2:
            without_cgroups()
        walled.append(sandboxed_execution(stdin))
        if with_cgroups and not i % 2:
            without_cgroups()
    b, w = statistics.median(bare), statistics.median(walled)
    out = {"executions": n, "bare_median_ms": round(1e3 * b, 2), "sandboxed_median_ms": round(1e3 * w, 2),
           "overhead_ms": round(1e3 * (w - b), 2), "ratio": round(w / b, 3),
           "sandboxed_p90_ms": round(1e3 * statistics.quantiles(walled, n=10)[-1], 2), "cgroups": with_cgroups}
    if rlimits_only:
        r = statistics.median(rlimits_only)
        out.update(without_cgroups_median_ms=round(1e3 * r, 2), cgroups_cost_ms=round(1e3 * (w - r), 2))
    return out


def through_pool(items: int, workers: int) -> dict:
    fenced = f"```python\n{PROGRAM}```"
    with ProcessVerifier([RewardSpec("code_tests")], num_workers=workers, timeout_s=30.0, memory_mb=2048) as v:
        v.score([ScoreRequest(fenced, TESTS, "code")] * workers)  # warm
        t0 = time.perf_counter()
        results, stats = v.score([ScoreRequest(fenced, TESTS, "code")] * items)
        seconds = time.perf_counter() - t0
    assert all(r.reward == 1.0 for r in results), stats
    return {"items": items, "tests_per_item": 3, "workers": workers, "items_per_s": round(items / seconds, 2),
            "ms_per_test_per_worker": round(1e3 * seconds * workers / (3 * items), 2), "outcomes": stats["outcomes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executions", type=int, default=200)
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(RESULTS, "sandbox.json"))
    args = ap.parse_args()
    probe()
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "interpreter": INTERPRETER},
           "per_execution": per_execution(args.executions), "pool": through_pool(args.items, args.workers),
           "target_overhead_ms": 30}
    text = json.dumps(out, indent=2)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
