"""data=mix (the reasoning-gym family mixture) and `rlvr value-report` on a small logged run."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rlvr.analysis.value_report import ContextMean, read_steps, replay, score
from rlvr.cli import main
from rlvr.config import compose
from rlvr.data import load_problems
from rlvr.sandbox import ProcessVerifier, ScoreRequest


def mix_splits(*overrides: str):
    cfg = compose(["data=mix", *overrides])
    train = load_problems(OmegaConf.to_container(cfg.data.train, resolve=True))
    held_out = load_problems(OmegaConf.to_container(cfg.data.eval, resolve=True), exclude={p.question for p in train})
    return cfg, train, held_out


def test_mix_is_seeded_disjoint_and_every_family_is_scored_strictly():
    cfg, train, held_out = mix_splits()
    _, train_again, held_out_again = mix_splits()
    assert train == train_again and held_out == held_out_again
    assert not {p.question for p in train} & {p.question for p in held_out}
    assert len(held_out) == 256
    families = {t["label"] for t in OmegaConf.to_container(cfg.data.train.tasks, resolve=True)}
    assert 4 <= len(families) <= 6
    assert set(Counter(p.family for p in train)) == families == set(Counter(p.family for p in held_out))
    # the gold answer, boxed, scores 1 for its answer type; the question echoed scores 0
    sample = [p for f in sorted(families) for p in [q for q in held_out if q.family == f][:6]]
    requests = [ScoreRequest(f"The answer is \\boxed{{{p.answer}}}.", p.answer, p.answer_type) for p in sample]
    requests += [ScoreRequest(p.question, p.answer, p.answer_type) for p in sample]
    with ProcessVerifier(OmegaConf.to_container(cfg.verifier.terms), num_workers=2, timeout_s=10) as verifier:
        results, _ = verifier.score(requests)
    assert [r.reward for r in results] == [1.0] * len(sample) + [0.0] * len(sample)
    assert all(p.answer_type == "number" for p in train + held_out)


def logged_run(tmp_path: Path, p_hats: list[list[float]], n: int = 4) -> Path:
    """A run dir as `rlvr train data=mix algorithm=v05` leaves it: config.yaml and decisions.jsonl."""
    cfg, train, _ = mix_splits()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    lines, it = [], iter(train)
    for step, rates in enumerate(p_hats, start=1):
        for rate in rates:
            p = next(it)
            lines.append(json.dumps({"step": step, "uid": p.uid, "prior": 0.5, "uncertainty": 0.3, "k": round(rate * n), "n": n}))
    (run_dir / "decisions.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def test_value_report_trivial_predictor_brier_is_the_variance_of_p_hat(tmp_path):
    rates = [0.0, 1.0, 0.5, 0.5]
    run_dir = logged_run(tmp_path, [rates] * 4)
    steps = read_steps(run_dir)
    texts = {}  # the trivial predictor never reads the text
    preds = replay(steps, {r["uid"]: "q" for rows in steps.values() for r in rows} | texts, ContextMean(256))
    result = score(preds, min_context=4)
    # from step 2 on the context mean is 0.5, so the Brier is the variance of p̂ around it: 0.125
    assert result["prompts"] == 12
    assert result["brier"] == pytest.approx(0.125) == pytest.approx(result["p_hat_var"])
    assert result["auc"] == pytest.approx(0.5)  # a constant prior ranks nothing


def test_value_report_cli_writes_json_and_png(tmp_path, capsys):
    run_dir = logged_run(tmp_path, [[0.0, 0.25, 0.5, 1.0, 0.75, 0.0, 0.25, 1.0]] * 6)
    assert main(["value-report", str(run_dir), "--min-context", "16", "--predictors", "logged", "context_mean", "ridge"]) == 0
    report = json.loads((run_dir / "value_report.json").read_text())
    assert (run_dir / "value_report.png").stat().st_size > 0
    assert set(report["predictors"]) == {"logged", "context_mean", "ridge"}
    for r in report["predictors"].values():
        assert r["prompts"] == 32 and 0 <= r["brier"] <= 1 and 0 <= r["auc"] <= 1
        assert sum(b["prompts"] for b in r["reliability"]) == 32
    assert report["predictors"]["context_mean"]["brier_over_context_mean"] == 1.0
    assert "brier" in capsys.readouterr().out
    # a directory that is no run fails with a message, not a traceback
    assert main(["value-report", str(tmp_path)]) == 2


def test_value_report_starts_from_the_warm_start_s_context_and_does_not_score_it(tmp_path):
    """V0.5's warm start filled the value context before step 1, but logged nothing: the replay's
    predictors saw 64 fewer items than the run's, and --min-context counted from the wrong place."""
    from rlvr.analysis.value_report import logged

    run_dir = logged_run(tmp_path, [[1.0, 1.0, 1.0, 1.0], [0.0, 0.5, 1.0, 0.5]])
    lines = (run_dir / "decisions.jsonl").read_text().splitlines()  # step 1's four become the warm-up's pairs
    (run_dir / "warmup.jsonl").write_text("".join(json.dumps({**json.loads(line), "decision": "warmup"}) + "\n" for line in lines[:4]))
    (run_dir / "decisions.jsonl").write_text("\n".join(lines[4:]) + "\n")
    steps = read_steps(run_dir)
    preds = replay(steps, {r["uid"]: "q" for rows in steps.values() for r in rows}, ContextMean(256))
    assert [(p.step, p.context, p.prior) for p in preds] == [(2, 4, 1.0)] * 4  # the warm-up's mean, 4 items of context
    assert [(p.step, p.context) for p in logged(steps, 256)] == [(2, 4)] * 4


# ---- found surviving mutants (2026-12-07): each pins a reported figure by hand -------------------------


def predictions(rows):
    from rlvr.analysis.value_report import Prediction

    return [Prediction(step, 100, prior, unc, k, n) for step, prior, unc, k, n in rows]


def test_value_report_auc_is_one_for_a_prior_that_ranks_every_success_above_every_failure():
    from rlvr.analysis.value_report import auc, score

    # prior 0.2: 0 of 4 correct; prior 0.8: 4 of 4 -> every positive has the higher prior: AUC 1
    assert auc(np.array([0.2, 0.8]), np.array([0, 4]), np.array([4, 4])) == pytest.approx(1.0)
    # mixed: prior 0.2 with 1/4, 0.8 with 3/4: pos (1, 3), neg (3, 1); pairs pos>neg: 3*3 = 9 of 16, ties at equal prior 1*3 + 3*1 = 6 -> (9 + 3)/16
    assert auc(np.array([0.2, 0.8]), np.array([1, 3]), np.array([4, 4])) == pytest.approx(12 / 16)
    # three prompts 0/4 @ 0.2, 2/4 @ 0.5, 4/4 @ 0.8: pos (0, 2, 4), neg (4, 2, 0), 36 pairs;
    # greater: 2*4 + 4*4 + 4*2 = 32, ties (2/4's own pos and neg) 2*2 = 4 -> (32 + 2)/36
    r = score(predictions([(1, 0.2, 0.1, 0, 4), (1, 0.5, 0.1, 2, 4), (1, 0.8, 0.1, 4, 4)]), min_context=0)
    assert r["auc"] == pytest.approx(34 / 36)
    assert r["corr"] == pytest.approx(1.0)  # p̂ = 0, 0.5, 1 is linear in the prior 0.2, 0.5, 0.8


def test_value_report_reliability_is_rollout_weighted():
    # both priors in the bin [0.5, 0.6): 1 of 2 and 8 of 8 -> 9 / 10 = 0.9 (the mean of rates would be 0.75)
    r = score(predictions([(1, 0.55, 0.1, 1, 2), (1, 0.55, 0.1, 8, 8)]), min_context=0)
    (row,) = r["reliability"]
    assert row["bin"] == pytest.approx([0.5, 0.6]) and row["prompts"] == 2
    assert row["mean_p_hat"] == pytest.approx(0.9)


def test_value_report_context_mean_keeps_the_newest_pairs():
    cm = ContextMean(2)
    cm.add_context(["a", "b"], [1.0, 1.0])
    cm.add_context(["c", "d"], [0.0, 0.0])
    prior, _ = cm.predict(["e"])
    assert float(prior[0]) == pytest.approx(0.0)


def test_value_report_brier_per_step_is_squared():
    # step 1: prior 0.5, p̂ 0 and 1 -> (0.25 + 0.25)/2 = 0.25; step 2: prior 0.9, p̂ 0.5 -> 0.16
    r = score(predictions([(1, 0.5, 0.1, 0, 4), (1, 0.5, 0.1, 4, 4), (2, 0.9, 0.1, 2, 4)]), min_context=0)
    assert r["brier_per_step"] == {1: pytest.approx(0.25), 2: pytest.approx(0.16)}
    assert r["brier"] == pytest.approx((0.25 + 0.25 + 0.16) / 3)


def test_value_report_uncertainty_rank_correlates_with_the_absolute_error():
    # prior 0.5, p̂ = 0.4, 0.8, 1.0: |error| 0.1, 0.3, 0.5 rises with unc 0.1, 0.2, 0.3 -> Spearman 1
    # (against the signed error +0.1, -0.3, -0.5 it would be -1)
    r = score(predictions([(1, 0.5, 0.1, 4, 10), (1, 0.5, 0.2, 8, 10), (1, 0.5, 0.3, 10, 10)]), min_context=0)
    assert r["unc_spearman"] == pytest.approx(1.0)


def test_value_report_ratio_is_each_predictor_s_brier_over_the_context_mean_s(tmp_path):
    from rlvr.analysis.value_report import value_report

    cfg = compose(["data=mix"])
    train = load_problems(OmegaConf.to_container(cfg.data.train, resolve=True))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    it, lines = iter(train), []
    for step in range(1, 5):  # each step: k = 4, 4, 4, 2 of n = 4 (p̂ 1, 1, 1, 0.5); the run's logged prior 0.5
        for k in (4, 4, 4, 2):
            lines.append(json.dumps({"step": step, "uid": next(it).uid, "prior": 0.5, "uncertainty": 0.3, "k": k, "n": 4}))
    (run_dir / "decisions.jsonl").write_text("\n".join(lines) + "\n")
    rep = value_report(run_dir, min_context=4, predictors=("logged", "context_mean"))["predictors"]
    # steps 2-4: context mean 0.875 -> Brier (3 * 0.125^2 + 0.375^2)/4 = 0.046875; logged 0.5 -> (3 * 0.25 + 0)/4 = 0.1875
    assert rep["context_mean"]["brier"] == pytest.approx(0.046875)
    assert rep["logged"]["brier"] == pytest.approx(0.1875)
    assert rep["logged"]["brier_over_context_mean"] == pytest.approx(4.0)  # worse than the trivial prior, not 0.25
