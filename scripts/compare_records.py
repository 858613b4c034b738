"""Two run dirs compared record by record: metrics.jsonl, decisions.jsonl and eval.jsonl.

For a change that must not change behaviour (a refactor): run the default job for a few steps
before and after it, then `python scripts/compare_records.py RUN_BEFORE RUN_AFTER`. Timings are
left out; any other value that differs (beyond a relative 1e-6) is listed. Prints JSON.
"""
import json, sys, math
a, b = sys.argv[1], sys.argv[2]
def load(d, f):
    try: return [json.loads(l) for l in open(f"{d}/{f}")]
    except FileNotFoundError: return []
report = {}
for f in ("metrics.jsonl", "decisions.jsonl", "eval.jsonl"):
    ra, rb = load(a, f), load(b, f)
    diffs, maxrel = [], 0.0
    for x, y in zip(ra, rb):
        for k in sorted(set(x) | set(y)):
            if k.startswith("time/") or k.endswith("seconds") or k in ("learner/peak_rss_mb", "sync/gb_per_s", "sync/load_s", "learner/seconds") or "_s" == k[-2:]:
                continue
            u, v = x.get(k), y.get(k)
            if u == v: continue
            if isinstance(u, float) and isinstance(v, float) and (math.isnan(u) and math.isnan(v)): continue
            if isinstance(u, (int, float)) and isinstance(v, (int, float)):
                rel = abs(u - v) / max(abs(u), abs(v), 1e-12); maxrel = max(maxrel, rel)
                if rel > 1e-6: diffs.append((x.get("step"), k, u, v))
            else:
                diffs.append((x.get("step"), k, u, v))
    report[f] = {"records": [len(ra), len(rb)], "differing": len(diffs), "max_rel_diff": maxrel, "first": diffs[:8]}
print(json.dumps(report, indent=1, default=str))
