"""The oracle's figures (rlvr.oracle.oracle_metrics) against a hand-worked batch."""

import pytest

from rlvr.batch import Batch, PromptGroup, Trajectory
from rlvr.data import Problem
from rlvr.oracle import oracle_metrics


def group(uid: str, correct: list[int], advantages: list[float], baseline: float) -> PromptGroup:
    trajectories = [Trajectory([1], [2], correct=bool(c), reward=float(c), advantage=a) for c, a in zip(correct, advantages)]
    return PromptGroup(Problem(uid, "q", "1"), trajectories, baseline)


def test_each_baseline_is_scored_against_the_oracle_success_rate():
    # A: 4 initial rollouts (1 correct) and 2 extra (both correct); V0.5's advantages c - b
    # B: a uniform all-wrong group given zero advantages, as GRPO gives it
    a = group("a", [1, 0, 0, 0, 1, 1], [0.55, -0.45, -0.45, -0.45, 0.55, 0.55], 0.45)
    b = group("b", [0, 0, 0, 0], [0.0] * 4, 0.1)
    batch = Batch([a, b], decisions=[{"uid": "a", "prior": 0.3}, {"uid": "b", "prior": 0.2}])
    m, records = oracle_metrics(batch, {"successes": [8, 4], "samples": 16, "seconds": 1.5}, n0=4)  # p* = 0.5, 0.25
    assert m["oracle/se_mean_n0"] == pytest.approx(((0.25 - 0.5) ** 2 + (0 - 0.25) ** 2) / 2)
    loo_a = ((0 - 0.5) ** 2 + 3 * (1 / 3 - 0.5) ** 2) / 4  # leave-one-out means of A's first 4: 0, 1/3, 1/3, 1/3
    assert m["oracle/se_rloo"] == pytest.approx((loo_a + 0.25**2) / 2)
    assert m["oracle/se_mean_spend"] == pytest.approx((0 + 0.25**2) / 2)  # A's 6 rollouts hit p* exactly
    assert m["oracle/se_v05"] == pytest.approx((0.05**2 + 0.15**2) / 2)
    assert m["oracle/se_prior"] == pytest.approx((0.2**2 + 0.05**2) / 2)
    assert m["oracle/sign_disagree"] == pytest.approx(4 / 10)  # B's zeros, where c - p* = -0.25
    assert m["oracle/zero_advantage"] == pytest.approx(4 / 10)
    assert m["oracle/p_star_mean"] == pytest.approx(0.375)
    assert m["oracle/p_star_var"] == pytest.approx((0.25 / 16 + 0.1875 / 16) / 2)
    assert m["time/oracle"] == 1.5 and m["oracle/samples"] == 16
    assert records[0] == {"uid": "a", "p_star": 0.5, "samples": 16, "n": 6, "mean_n0": 0.25, "mean_spend": 0.5, "baseline": 0.45, "prior": 0.3}
    assert records[1]["n"] == 4 and records[1]["p_star"] == 0.25


def test_a_run_without_baselines_or_priors_reports_what_it_has():
    batch = Batch([group("a", [1, 1, 0, 0], [1.0, 1.0, -1.0, -1.0], None)])
    m, records = oracle_metrics(batch, {"successes": [3], "samples": 4, "seconds": 0.1}, n0=4)
    assert "oracle/se_v05" not in m and "oracle/se_prior" not in m and "baseline" not in records[0]
    assert m["oracle/sign_disagree"] == 0.0 and m["oracle/se_mean_n0"] == pytest.approx(0.25**2)
