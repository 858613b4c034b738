"""The oracle in the live loop (eval.oracle.*) measures and changes nothing it measures: the same
run with and without it trains on the same batches, makes the same V0.5 decisions, and spends the
same rollouts. (A resumed run logs the same oracle figures: tests/e2e/test_resume.py.)"""

import json

import pytest
from helpers import SAME, TINY

from rlvr.config import compose
from rlvr.train.loop import train

BASE = TINY + ["algorithm=v05", "weighting=hadw", "algorithm.warmup_prompts=4", "trainer.eval_every=0", "eval.at_start=false", "trainer.save_every=0"]


@pytest.mark.slow
def test_the_oracle_changes_neither_the_batch_nor_the_value_context_nor_the_spend(tmp_path, ray_session, tiny_model):
    plain = {h["step"]: h for h in train(compose(BASE + [f"run_dir={tmp_path / 'plain'}"]))["history"]}
    run_dir = tmp_path / "oracle"
    measured = {h["step"]: h for h in train(compose(BASE + ["eval.oracle.samples=6", f"run_dir={run_dir}"]))["history"]}
    for step in (1, 2):
        for key in SAME + ("v05/window", "v05/extra_mean", "v05/prior_brier"):
            expected = pytest.approx(plain[step][key], rel=1e-5) if key.startswith("learner/") else plain[step][key]
            assert measured[step][key] == expected, (step, key)
        assert 0 <= measured[step]["oracle/p_star_mean"] <= 1 and measured[step]["time/oracle"] > 0
        assert {"oracle/se_mean_n0", "oracle/se_rloo", "oracle/se_v05", "oracle/se_prior", "oracle/sign_disagree"} <= set(measured[step])
        assert -1 <= measured[step]["oracle/grad_cosine"] <= 1 and measured[step]["time/oracle_gradient"] > 0
        assert -1 <= measured[step]["oracle/grad_cosine_unweighted"] <= 1  # HA-DW's gradient before its weights, the same step
        assert not any(k.startswith("oracle/") for k in plain[step])
    decisions = [(tmp_path / name / "decisions.jsonl").read_text() for name in ("plain", "oracle")]
    assert decisions[0] == decisions[1]  # step 2's priors read a value context the oracle never entered
    records = [json.loads(line) for line in (run_dir / "oracle.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1] * 4 + [2] * 4  # every training prompt, at every step (every=1)
    for r in records:
        assert r["samples"] == 6 and 0 <= r["p_star"] <= 1 and r["p_star"] * 6 == pytest.approx(round(r["p_star"] * 6))
        assert r["n"] >= 4 and "baseline" in r and "prior" in r
        if 0 < r["p_star"] < 1:  # HA-DW's bias, with and without its weights, on each side of p*
            assert r["n_correct"] + r["n_wrong"] == r["n"]
            assert all(f"bias_{cls}{w}" in r for cls in ("correct", "wrong") if r[f"n_{cls}"] for w in ("", "_weighted"))
    assert not (tmp_path / "plain" / "oracle.jsonl").exists()
    # the report over the run: each baseline's error, the bias by bucket, the gradient cosine over steps
    from benchmarks.experiments import oracle_report

    result = oracle_report.main([str(run_dir), "--out", str(tmp_path / "oracle.json")])[str(run_dir)]
    assert result["records"] == 8 and {"mean_n0", "v05", "prior"} <= set(result["baselines"])
    assert result["grad_cosine"]["steps"] == 2 and -1 <= result["grad_cosine"]["mean"] <= 1
    assert set(result["grad_cosine"]) >= {"unweighted", "weighted_minus_unweighted"}
    assert isinstance(result["advantage_bias"], dict) and (tmp_path / "oracle.json").exists()
