"""benchmarks/micro/optimizer_step.py: torch's three AdamW implementations step the model's real
parameters to the same result, and the report is well formed. The figures come from SmolLM2
(docs/benchmarks.md)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_times_each_implementation_on_the_same_update(tmp_path, tiny_model):
    out = tmp_path / "optimizer_step.json"
    cmd = [sys.executable, "-m", "benchmarks.micro.optimizer_step", "--repeats", "2", "--out", str(out), "model=tiny-random"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    assert report["parameters"] > 0 and set(report["seconds"]) == {"per-tensor", "foreach", "fused"}
    assert all(len(s) == 2 and min(s) > 0 for s in report["all_seconds"].values())
    assert report["vs_fused"]["fused"] == 1
    assert max(report["max_abs_diff_from_per_tensor"].values()) < 1e-6
