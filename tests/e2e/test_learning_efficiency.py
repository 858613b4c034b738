"""benchmarks/experiments/learning_efficiency.py quick mode: real training runs on the tiny model (kept actors), skipped when
finished, and a well-formed report. The figures come from full runs (docs/benchmarks.md)."""

import json
import math
from pathlib import Path

from benchmarks.experiments import learning_efficiency as le


def saved_step0(out: Path) -> set[int]:
    return {json.loads(line)["step"] for line in (out / "runs" / "grpo-s0" / "eval.jsonl").read_text().splitlines()}


def test_quick_grid_runs_resumes_and_reports(tmp_path, tiny_model, capsys):
    args = ["--quick", "--configs", "grpo", "v05", "--seeds", "0", "--out", str(tmp_path), "--bootstrap", "50"]
    result = le.main(args)
    assert set(result["curves"]) == {"grpo", "v05"}
    for name, curve in result["curves"].items():
        assert curve["steps"] == [0, 1] and len(curve["accuracy"]) == len(curve["accuracy_ci"]) == 2
        assert all(0 <= a <= 1 for a in curve["accuracy"])
        # V0.5's warm start (2 prompts x n0 = 4) is spend before step 1
        assert curve["rollouts"][0] == (2 * 4 if name == "v05" else 0) and curve["rollouts"][1] > curve["rollouts"][0]
        assert set(curve["pass_at_k_last"]) == {1, 2}
    answer = result["answers"]["1_v05_rollouts_to_grpo_final"]
    # the tiny model never answers, so GRPO's final accuracy (0) is reached at 0 rollouts: no ratio
    assert math.isnan(answer["ratio"]) or answer["ratio"] > 0
    assert len(answer["ci95"]) == 2 and 0 <= answer["never_reached_frac"] <= 1
    # step 0 (the untrained model) is evaluated once, by the grid's first run, and shared
    v05_steps = {json.loads(line)["step"] for line in (tmp_path / "runs" / "v05-s0" / "eval.jsonl").read_text().splitlines()}
    assert v05_steps == {1} and saved_step0(tmp_path) == {0, 1}
    kept = {p.name for p in (tmp_path / "runs" / "v05-s0").iterdir()}
    assert {"summary.json", "eval.jsonl", "metrics.jsonl"} <= kept <= set(le.KEEP)  # checkpoints removed
    assert "step 0 held-out accuracy" in (tmp_path / "runs" / "grpo-s0.log").read_text()  # each run's own log
    # question 4: per task family, for each config and for the pair v05 - grpo
    families = result["answers"]["4_by_family"]
    assert set(families["accuracy"]) == {"grpo", "v05"} and set(families["differences"]) == {"v05 - grpo"}
    for row in families["accuracy"]["grpo"].values():
        assert 0 <= row["accuracy"] <= 1 and row["prompts"] >= 1
    # question 5: the oracle ran on both (eval.oracle.samples=2 in quick mode) and its records were kept
    assert (tmp_path / "runs" / "grpo-s0" / "oracle.jsonl").stat().st_size > 0
    oracle = result["answers"]["5_oracle_baseline_mse"]
    assert set(oracle) == {"grpo", "v05"} and oracle["v05"]["records"] == 2 and "v05" in oracle["v05"]["baselines"]
    assert all("grad_cosine" in oracle[c] for c in oracle)  # None where no oracle step computed one
    saved = json.loads((tmp_path / "learning_efficiency.json").read_text())
    assert saved["held_out_prompts"] == 4 and (tmp_path / "learning_efficiency.png").stat().st_size > 0
    capsys.readouterr()
    le.main(args)  # a rerun skips the finished runs
    assert capsys.readouterr().err.count("done already, skipped") == 2
