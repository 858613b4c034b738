"""How far each baseline was from the true success rate, from runs with the oracle on.

`rlvr train ... eval.oracle.samples=32` writes oracle.jsonl (one record per training prompt at each
oracle step); this reads one or more run dirs and prints, per run, each baseline's mean squared
error against p* (less the oracle's own sampling noise) with a 95 % bootstrap interval over the
(step, prompt) records, and its ratio to the group mean of the first n0 rollouts (rlvr.oracle.report).

Usage: python benchmarks/oracle_report.py RUN_DIR [RUN_DIR ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from rlvr.oracle import report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = {}
    for run in args.runs:
        path = run / "oracle.jsonl"
        if not path.is_file():
            sys.exit(f"{path}: no oracle records (train with eval.oracle.samples=M)")
        result[str(run)] = report([json.loads(line) for line in path.read_text().splitlines()])
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
