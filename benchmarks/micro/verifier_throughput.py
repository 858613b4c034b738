"""Verifier pool throughput, slowdown under pathological input, recovery time.

Writes JSON to stdout and to --out (default benchmarks/out/verifier_throughput.json):

* ``healthy``: items per second (total and per worker) on a realistic mix of
  answers: 60% GSM8K-style numeric completions (reasoning text, ``####`` or
  ``\\boxed{}``), 30% MATH-style expression answers (fractions, radicals,
  intervals, sets, polynomials) and 10% multiple choice; about 70% correct.
  Also with a single worker.
* ``pathological_issue_mix``: the same items with 5% replaced by the
  pathological inputs listed in the issue (huge exponents, deep braces, 1 MB
  completions, invalid UTF-8 / NUL, empty, ``\\boxed{}``, several boxes,
  parser-loop LaTeX).  The throughput of the *healthy* items is measured from
  the start of the batch until the last healthy item is scored.
* ``pathological_all_hang``: worst case, every pathological item (5%) is one
  that really runs until its deadline (a LaTeX sum of huge powers compared
  with a numeric gold: SymPy grinds until the deadline).
* Both report the wall-clock slowdown of the healthy items (median of the
  runs, against the median of the interleaved healthy-only runs) and a
  load-independent CPU estimate: the share of the workers' CPU at normal
  priority that went to pathological items.  On a box shared with other jobs
  the wall-clock figure is noisy (+-30% between identical runs).
* ``recovery``: seconds from a worker's kill to its replacement being ready
  (fork from the warm zygote), measured over the kills above and over
  external SIGKILLs, against the cold start of a fresh interpreter with
  math-verify (what a spawn-per-replacement design would pay).

Usage: python -m benchmarks.micro.verifier_throughput [--items 600] [--timeout 5] [--workers 2] [--rounds 3] [--hang-rounds 1]
Keep it short on a 2-core box: the defaults run in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import time

from benchmarks.common import OUT
from rlvr.sandbox import ProcessVerifier, RewardSpec, ScoreRequest

FILLER = (
    "Let's think step by step. First we find how many items there are in each group, "
    "then we multiply by the number of groups and subtract what was given away. "
)

def expression_case(rng: random.Random) -> tuple[str, str, str]:
    """(gold, equivalent prediction, wrong prediction) with random numbers,
    so that predictions are (mostly) distinct strings, as in real rollouts."""
    a, b, k = rng.randint(1, 40), rng.randint(2, 40), rng.randint(2, 9)
    kind = rng.randrange(8)
    if kind == 0:
        return rf"\frac{{{a}}}{{{b}}}", rf"\frac{{{k * a}}}{{{k * b}}}", rf"\frac{{{a + 1}}}{{{b}}}"
    if kind == 1:
        return rf"{a}\sqrt{{{b}}}", rf"\sqrt{{{a * a * b}}}", rf"{a + 1}\sqrt{{{b}}}"
    if kind == 2:
        return rf"({a},{a + b}]", rf"({a}, {a + b}]", rf"[{a},{a + b}]"
    if kind == 3:
        return rf"\{{{a},{b},{a + b + 1}\}}", rf"\{{{a + b + 1},{b},{a}\}}", rf"\{{{a},{b}\}}"
    if kind == 4:
        return rf"x^2+{2 * a}x+{a * a}", rf"(x+{a})^2", rf"(x-{a})^2"
    if kind == 5:
        return rf"\frac{{{a}\pi}}{{{b}}}", rf"\frac{{{k * a}\pi}}{{{k * b}}}", rf"\frac{{\pi}}{{{b}}}"
    if kind == 6:
        return rf"{a}x-{b}", rf"-{b}+{a}x", rf"{a}x+{b}"
    return rf"\frac{{\sqrt{{{b}}}}}{{{a}}}", rf"\frac{{\sqrt{{{b}}}}}{{{a}}}", rf"\frac{{{b}}}{{{a}}}"


def healthy_item(rng: random.Random) -> ScoreRequest:
    u = rng.random()
    correct = rng.random() < 0.7
    if u < 0.6:
        gold = rng.randint(0, 5000)
        pred = gold if correct else gold + rng.choice([-2, -1, 1, 10])
        steps = " ".join(f"{rng.randint(2, 99)} * {rng.randint(2, 9)} = {rng.randint(10, 900)}." for _ in range(rng.randint(2, 6)))
        body = FILLER * rng.randint(1, 4) + steps
        tail = f"\n#### {pred}" if rng.random() < 0.5 else f"\nSo the answer is $\\boxed{{{pred}}}$."
        return ScoreRequest(body + tail, str(gold), "number")
    if u < 0.9:
        gold, good, bad = expression_case(rng)
        pred = good if correct else bad
        return ScoreRequest(FILLER * rng.randint(1, 3) + f"Therefore the answer is $\\boxed{{{pred}}}$.", gold, "expression")
    gold = rng.choice("ABCDE")
    pred = gold if correct else rng.choice([c for c in "ABCDE" if c != gold])
    return ScoreRequest(FILLER + f"The answer is ({pred}).", gold, "choice")


HANG = r"\boxed{\sum_{k=1}^{99999} k^{99999}}"


def pathological_items() -> list[ScoreRequest]:
    big = "lorem ipsum 45 " * 70_000
    return [
        ScoreRequest(r"\boxed{10^{10^{10^{10}}}}", "45", "number"),
        ScoreRequest(r"\boxed{10^{10^{10^{10}}}}", "x", "expression"),
        ScoreRequest(r"\boxed{9^{99999999}}", "x", "expression"),
        ScoreRequest("\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}", "x", "expression"),
        ScoreRequest(big, "45", "number"),
        ScoreRequest(r"\boxed{" + "x+" * 400_000 + "1}", "x", "expression"),
        ScoreRequest(b"\xff\xfe \\boxed{45} \xc3\x28".decode("utf-8", "surrogateescape") + "\x00" * 100, "45", "number"),
        ScoreRequest("", "45", "number"),
        ScoreRequest(r"\boxed{}", "x", "expression"),
        ScoreRequest(r"\boxed{1}\boxed{2}\boxed{45}", "45", "number"),
        ScoreRequest(r"\boxed{" + "(" * 40 + "1" + ")" * 40 + "}", "x", "expression"),
        ScoreRequest(HANG, "2", "expression"),
    ]


def run_mix(v: ProcessVerifier, reqs: list[ScoreRequest], healthy_idx: list[int]) -> dict:
    t0 = time.perf_counter()
    results, stats = v.score(reqs)
    wall = time.perf_counter() - t0
    fin = v.last_finish_times
    healthy_done = max(fin[i] for i in healthy_idx)
    cpu = v.last_cpu_times
    hset = set(healthy_idx)
    cpu_healthy = sum(c or 0.0 for i, c in enumerate(cpu) if i in hset)
    # a worker killed at the deadline reports nothing: count its item as a
    # full deadline of CPU (an upper bound)
    cpu_bad = sum((c if c is not None else v.timeout_s) for i, c in enumerate(cpu) if i not in hset)
    # CPU the pathological items took at normal priority: all of it for items
    # that finished, up to the re-nice for items that were set aside (after
    # that they run at nice 19, on CPU that the healthy items leave idle)
    rn = v.last_renice_cpu
    cpu_bad_normal = sum(rn[i] if i in rn else (c if c is not None else v.timeout_s)
                         for i, c in enumerate(cpu) if i not in hset)
    return {
        "items": len(reqs),
        "healthy_items": len(healthy_idx),
        "wall_s": round(wall, 3),
        "healthy_done_s": round(healthy_done, 3),
        "healthy_items_per_s": round(len(healthy_idx) / healthy_done, 1),
        "items_per_s": round(len(reqs) / wall, 1),
        "errors": {k: stats[k] for k in ("timeout", "oom", "crash", "error")},
        "healthy_items_with_error": sum(1 for i in healthy_idx if results[i].error is not None),
        "worker_cpu_s_healthy": round(cpu_healthy, 3),
        "worker_cpu_s_pathological": round(cpu_bad, 3),
        "worker_cpu_s_pathological_at_normal_priority": round(cpu_bad_normal, 3),
        "cpu_estimate_of_healthy_slowdown": round(cpu_bad_normal / (cpu_bad_normal + cpu_healthy), 3),
        "replaced": stats["replaced"],
        "reward_mean": round(stats["reward_mean"], 4),
    }


def cold_start_s() -> float:
    t0 = time.perf_counter()
    v = ProcessVerifier([RewardSpec("math")], num_workers=1, num_spares=0)
    dt = time.perf_counter() - t0
    v.close()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hang-rounds", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(OUT, "verifier_throughput.json"))
    args = ap.parse_args()

    rng = random.Random(args.seed)
    n_bad = max(1, round(0.05 * args.items))
    bad_positions = sorted(rng.sample(range(args.items), n_bad))
    bad_set = set(bad_positions)
    healthy_idx = [i for i in range(args.items) if i not in bad_set]
    patho = pathological_items()

    def batch(kind: str) -> list[ScoreRequest]:
        """Fresh items for every run (new golds and predictions), so that no
        run is scored from the caches of an earlier one."""
        items = [healthy_item(rng) for _ in range(args.items)]
        for j, pos in enumerate(bad_positions):
            if kind == "issue":
                items[pos] = patho[j % len(patho)]
            elif kind == "hang":
                items[pos] = ScoreRequest(HANG, "2", "expression")
        return items

    out: dict = {
        "benchmark": "verifier_throughput",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "settings": {"items": args.items, "workers": args.workers, "timeout_s": args.timeout, "pathological_fraction": 0.05,
                     "mix": "60% number (GSM8K-style), 30% expression (MATH-style), 10% choice; ~70% correct"},
    }
    t_all = time.perf_counter()

    # single worker: the per-worker figure without sharing the 2 cores
    with ProcessVerifier([RewardSpec("math")], num_workers=1, timeout_s=args.timeout) as v1:
        one = [run_mix(v1, batch("healthy"), list(range(args.items)))["items_per_s"] for _ in range(2)]
    runs: dict[str, list[dict]] = {"healthy": [], "issue": [], "hang": []}
    with ProcessVerifier([RewardSpec("math")], num_workers=args.workers, timeout_s=args.timeout) as v:
        # interleaved rounds, so that load from other processes hits all variants alike
        for r in range(args.rounds):
            runs["healthy"].append(run_mix(v, batch("healthy"), healthy_idx))
            runs["issue"].append(run_mix(v, batch("issue"), healthy_idx))
            if r < args.hang_rounds:
                runs["hang"].append(run_mix(v, batch("hang"), healthy_idx))
        runs["healthy"].append(run_mix(v, batch("healthy"), healthy_idx))
        healthy = batch("healthy")

        # external kills: SIGKILL idle workers and measure the replacement
        ext = []
        for _ in range(5):
            victim = v.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            t0 = time.perf_counter()
            v.score([healthy[0]])
            while len(v.worker_pids()) < v.num_workers + v.num_spares or victim in v.worker_pids():
                time.sleep(0.001)
            ext.append(time.perf_counter() - t0)
        lat = list(v.spawn_latencies)

    med = lambda xs: round(statistics.median(xs), 1)  # noqa: E731
    h_rates = [x["healthy_items_per_s"] for x in runs["healthy"]]
    healthy_ref = statistics.median(h_rates)
    out["healthy"] = {
        "one_worker_items_per_s": med(one),
        "one_worker_runs": one,
        f"{args.workers}_workers_items_per_s": round(healthy_ref * args.items / len(healthy_idx), 1),
        "items_per_s_per_worker": round(healthy_ref * args.items / len(healthy_idx) / args.workers, 1),
        "healthy_subset_items_per_s_runs": h_rates,
        "items_with_error_runs": [x["healthy_items_with_error"] for x in runs["healthy"]],
    }
    for name, key in (("pathological_issue_mix", "issue"), ("pathological_all_hang", "hang")):
        rs = runs[key]
        rates = [x["healthy_items_per_s"] for x in rs]
        slow = round(1 - statistics.median(rates) / healthy_ref, 3)
        out[name] = {
            "healthy_items_per_s_runs": rates,
            "healthy_slowdown_median": slow,
            "target_lt_0.20_met": slow < 0.20,
            # worker CPU per run; the pathological figure includes the CPU that
            # hung items burn after the healthy items are done (priority restored),
            # and counts a killed item as a full deadline
            "worker_cpu_s_healthy_runs": [x["worker_cpu_s_healthy"] for x in rs],
            "worker_cpu_s_pathological_runs": [x["worker_cpu_s_pathological"] for x in rs],
            "worker_cpu_s_pathological_at_normal_priority_runs": [x["worker_cpu_s_pathological_at_normal_priority"] for x in rs],
            # load-independent estimate (an upper bound: a killed item that was
            # never re-niced counts as a full deadline of CPU): the share of the
            # workers' normal-priority CPU that went to pathological items
            "cpu_estimate_of_healthy_slowdown_runs": [x["cpu_estimate_of_healthy_slowdown"] for x in rs],
            "wall_s_runs": [x["wall_s"] for x in rs],
            "healthy_done_s_runs": [x["healthy_done_s"] for x in rs],
            "errors_runs": [x["errors"] for x in rs],
            "healthy_items_with_error_runs": [x["healthy_items_with_error"] for x in rs],
            "pathological_items": args.items - len(healthy_idx),
        }
    out["recovery"] = {
        "replacement_ready_s_median": round(statistics.median(lat), 4) if lat else None,
        "replacement_ready_s_max": round(max(lat), 4) if lat else None,
        "replacements_measured": len(lat),
        "external_sigkill_to_full_pool_s": [round(x, 4) for x in ext],
        "cold_start_s_fresh_interpreter": round(cold_start_s(), 3),
    }
    out["total_s"] = round(time.perf_counter() - t_all, 1)
    out["machine"]["load_avg_1m_end"] = os.getloadavg()[0]

    text = json.dumps(out, indent=2)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
