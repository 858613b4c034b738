"""The oracle's figures (rlvr.train.oracle.oracle_metrics) against a hand-worked batch."""

import pytest

from rlvr.data import Problem
from rlvr.train.oracle import oracle_metrics
from rlvr.types import Batch, PromptGroup, Trajectory


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
    # GRPO on A's correctness: (c - 0.5) / (sqrt(0.3) + 1e-6) (Bessel std); A* = (c - 0.5) / 0.5
    grpo_gap = 1 - 0.5 / 0.3**0.5
    assert records[0] == {"uid": "a", "p_star": 0.5, "samples": 16, "n": 6, "mean_n0": 0.25, "mean_spend": 0.5, "se_rloo": pytest.approx(loo_a),
                          "baseline": 0.45, "prior": 0.3, "n_correct": 3, "n_wrong": 3,
                          "bias_correct": pytest.approx(-grpo_gap, rel=1e-4), "bias_wrong": pytest.approx(grpo_gap, rel=1e-4)}  # GRPO's eps
    assert records[1]["n"] == 4 and records[1]["p_star"] == 0.25
    # B (p* = 0.25, hard): GRPO gives its uniform group 0, A* = -0.25 / sqrt(0.1875) for each wrong rollout
    assert records[1]["bias_wrong"] == pytest.approx(0.25 / 0.1875**0.5) and "bias_correct" not in records[1]
    assert m["oracle/adv_bias_hard_wrong"] == pytest.approx(0.25 / 0.1875**0.5)
    assert not any(k.startswith("oracle/adv_bias_easy") for k in m) and "oracle/adv_bias_hard_correct" not in m  # A (0.5) is neither


def test_the_advantage_bias_uses_the_run_s_estimator_and_its_weights_over_their_gain():
    import torch

    from rlvr.train.oracle import true_advantages

    c, p = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0.2, 0.2, 0.0, 1.0])
    assert true_advantages(c, p, scaled=False).tolist() == pytest.approx([0.8, -0.2, 1.0, -1.0])
    scaled = true_advantages(c, p, scaled=True)
    assert scaled[:2].tolist() == pytest.approx([0.8 / 0.4, -0.2 / 0.4]) and scaled[2:].isnan().all()  # no finite true scale at 0 and 1

    # V0.5 (unscaled): Â = c - b on correctness; HA-DW-like weights 1.5 * (2, 0.5, 0.5, 0.5), gain 1.5
    a = group("a", [1, 0, 0, 0], [0.0] * 4, 0.4)
    batch = Batch([a])
    batch.advantage_weights = torch.tensor([3.0, 0.75, 0.75, 0.75])
    m, records = oracle_metrics(batch, {"successes": [2], "samples": 10, "seconds": 0.1}, n0=4, estimator="v05",
                                estimator_kwargs={"scale_by_std": False}, weight_gain=1.5)  # p* = 0.2: hard
    assert records[0]["bias_correct"] == pytest.approx((1 - 0.4) - (1 - 0.2))
    assert records[0]["bias_wrong"] == pytest.approx((0 - 0.4) - (0 - 0.2))
    assert records[0]["bias_correct_weighted"] == pytest.approx(2 * 0.6 - 0.8)
    assert records[0]["bias_wrong_weighted"] == pytest.approx(0.5 * -0.4 + 0.2, abs=1e-6)  # b is float32
    assert m["oracle/adv_bias_hard_correct"] == pytest.approx(-0.2) and m["oracle/adv_bias_hard_wrong_weighted"] == pytest.approx(0.0, abs=1e-6)


def test_a_run_without_baselines_or_priors_reports_what_it_has():
    batch = Batch([group("a", [1, 1, 0, 0], [1.0, 1.0, -1.0, -1.0], None)])
    m, records = oracle_metrics(batch, {"successes": [3], "samples": 4, "seconds": 0.1}, n0=4)
    assert "oracle/se_v05" not in m and "oracle/se_prior" not in m and "baseline" not in records[0]
    assert m["oracle/sign_disagree"] == 0.0 and m["oracle/se_mean_n0"] == pytest.approx(0.25**2)
    # p* = 1: no oracle sign, so no rollout can disagree with it
    m, _ = oracle_metrics(batch, {"successes": [4], "samples": 4, "seconds": 0.1}, n0=4)
    assert m["oracle/sign_disagree"] == 0.0
    # ... nor agree with it: only prompts with 0 < p* < 1 are counted (they were, diluting the share)
    both = Batch([group("a", [1, 0], [-1.0, 1.0], None), group("b", [0, 0], [-1.0, -1.0], None)])
    m, _ = oracle_metrics(both, {"successes": [2, 4], "samples": 4, "seconds": 0.1}, n0=2)  # p* = 0.5, 1
    assert m["oracle/sign_disagree"] == 1.0


def test_the_report_subtracts_the_oracle_noise_and_pairs_the_ratios():
    from rlvr.train.oracle import report

    records = [{"p_star": p, "samples": 8, "mean_n0": m, "mean_spend": s, "se_rloo": 0.05, "baseline": b, "prior": 0.5}
               for p, m, s, b in [(0.5, 0.25, 0.5, 0.45), (0.25, 0.0, 0.125, 0.2), (1.0, 1.0, 1.0, 0.9), (0.0, 0.25, 0.0, 0.1)]]
    out = report(records, reps=500)
    noise = (0.25 / 7 + 0.1875 / 7) / 4  # p̂(1 − p̂)/(M − 1): unbiased
    assert out["records"] == 4 and out["oracle_noise"] == pytest.approx(noise)
    n0 = out["baselines"]["mean_n0"]
    assert n0["mse"] == pytest.approx((0.0625 + 0.0625 + 0 + 0.0625) / 4 - noise)
    assert n0["over_mean_n0"] == pytest.approx(1.0) and n0["mse_ci95"][0] <= n0["mse"] <= n0["mse_ci95"][1]
    v05 = out["baselines"]["v05"]
    assert v05["mse"] == pytest.approx((0.0025 + 0.0025 + 0.01 + 0.01) / 4 - noise)
    assert set(out["baselines"]) == {"mean_n0", "mean_spend", "rloo", "v05", "prior"}


def test_the_report_gives_the_advantage_bias_by_bucket_with_intervals():
    from rlvr.train.oracle import report

    # two hard prompts (p* 0.1, 0.2) and one in between (0.5, in no bucket); rollout-weighted means
    records = [
        {"p_star": 0.1, "samples": 10, "mean_n0": 0.0, "mean_spend": 0.0, "n_correct": 1, "n_wrong": 3, "bias_correct": -1.0, "bias_wrong": 0.2,
         "bias_correct_weighted": -0.5, "bias_wrong_weighted": 0.1},
        {"p_star": 0.2, "samples": 10, "mean_n0": 0.0, "mean_spend": 0.0, "n_correct": 3, "n_wrong": 1, "bias_correct": -2.0, "bias_wrong": 0.4,
         "bias_correct_weighted": -1.0, "bias_wrong_weighted": 0.3},
        {"p_star": 0.5, "samples": 10, "mean_n0": 0.5, "mean_spend": 0.5, "n_correct": 2, "n_wrong": 2, "bias_correct": 9.0, "bias_wrong": 9.0},
    ]
    bias = report(records, reps=300)["advantage_bias"]
    assert set(bias) == {"hard"}
    assert bias["hard"]["correct"]["raw"]["mean"] == pytest.approx((-1.0 * 1 - 2.0 * 3) / 4)
    assert bias["hard"]["wrong"]["weighted"]["mean"] == pytest.approx((0.1 * 3 + 0.3 * 1) / 4)
    assert bias["hard"]["correct"]["raw"]["rollouts"] == 4
    lo, hi = bias["hard"]["correct"]["raw"]["ci95"]
    assert -2.0 <= lo <= bias["hard"]["correct"]["raw"]["mean"] <= hi <= -1.0
    # the weights halve the hard-correct bias in both records: |raw| - |weighted| is above 0, paired
    reduction = bias["hard"]["correct"]["reduction"]
    assert reduction["mean"] == pytest.approx(7 / 4 - (0.5 * 1 + 1.0 * 3) / 4)
    assert 0.5 <= reduction["ci95"][0] <= reduction["mean"] <= reduction["ci95"][1] <= 1.0


def test_spearman_gives_ties_their_mean_rank_and_the_oracle_noise_is_unbiased():
    """Ties split by argsort biased Spearman (0.188 against 0.212); p̂*(1 − p̂*)/M under-subtracted
    the oracle's noise by p(1 − p)/M² in every MSE."""
    import numpy as np

    from rlvr.analysis.value_report import _spearman
    from rlvr.train.oracle import report

    x, y = np.array([0.5, 0.5, 0.5, 0.2, 0.9, 0.9]), np.array([1.0, 0.0, 0.5, 0.1, 0.8, 0.3])
    rx, ry = np.array([3.0, 3.0, 3.0, 1.0, 5.5, 5.5]), np.array([6.0, 1.0, 4.0, 2.0, 5.0, 3.0])  # ranks by hand (1-based)
    assert _spearman(x, y) == pytest.approx(float(np.corrcoef(rx, ry)[0, 1]))
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    p_star = rng.binomial(32, p) / 32
    records = [{"p_star": float(s), "samples": 32, "mean_n0": float(t), "mean_spend": float(t)} for s, t in zip(p_star, p)]
    mse = report(records, reps=10)["baselines"]["mean_n0"]["mse"]  # a perfect baseline: 0 once the noise is taken out
    assert abs(mse) < 2e-5, mse


# ---- found surviving mutants (2026-12-07): each pins a reported figure by hand -------------------------


def scored_group(uid, correct, advantages, baseline=None):
    ts = [Trajectory([1], [2], correct=bool(c), reward=float(c), advantage=a) for c, a in zip(correct, advantages)]
    return PromptGroup(Problem(uid, "q", "1"), ts, baseline)


def test_oracle_report_ratio_is_baseline_over_reference_with_its_interval():
    from rlvr.train.oracle import report

    # p* in {0, 1}: no oracle noise. se(mean_n0) = 0.25 each, se(mean_spend) = 0.0625 each, se(v05) = 0.01 each
    records = [{"p_star": 1.0, "samples": 8, "mean_n0": 0.5, "mean_spend": 0.75, "baseline": 0.9},
               {"p_star": 0.0, "samples": 8, "mean_n0": 0.5, "mean_spend": 0.25, "baseline": 0.1}]
    v05 = report(records, reps=200)["baselines"]["v05"]
    assert v05["mse"] == pytest.approx(0.01)
    assert v05["over_mean_n0"] == pytest.approx(0.01 / 0.25)  # 0.04, not 25
    assert v05["over_mean_spend"] == pytest.approx(0.01 / 0.0625)  # 0.16
    assert v05["over_mean_n0_ci95"] == pytest.approx([0.04, 0.04])  # every resample has the same ratio


def test_oracle_report_interval_is_the_2_5_and_97_5_percentiles_of_the_paired_bootstrap():
    import numpy as np

    from rlvr.train.oracle import report

    # 100 records, p* = 0 (no noise), mean_n0 alternating 0 / 1: se_i alternating 0 / 1
    records = [{"p_star": 0.0, "samples": 8, "mean_n0": float(i % 2), "mean_spend": 0.0} for i in range(100)]
    out = report(records, reps=2000, seed=0)
    se = np.array([float(i % 2) for i in range(100)])
    idx = np.random.default_rng(0).integers(0, 100, size=(2000, 100))  # report's resamples
    boot = se[idx].mean(1)
    lo, hi = out["baselines"]["mean_n0"]["mse_ci95"]
    assert [lo, hi] == pytest.approx([np.percentile(boot, 2.5), np.percentile(boot, 97.5)])
    # a 95 % interval of a mean of 100 draws with sd 0.5: about 0.5 ± 1.96 * 0.05 (a 90 % one is ± 0.082)
    assert hi - lo > 0.18


def test_oracle_report_subtracts_each_resample_s_own_noise():
    from rlvr.train.oracle import report

    # record 1: p* = 0.5, M = 2: noise 0.5*0.5/(2-1) = 0.25 and se = (0 - 0.5)^2 = 0.25
    # record 2: p* = 0: noise 0 and se 0.  So se_i - noise_i = 0 for every record: every resample is 0
    records = [{"p_star": 0.5, "samples": 2, "mean_n0": 0.0, "mean_spend": 0.0},
               {"p_star": 0.0, "samples": 2, "mean_n0": 0.0, "mean_spend": 0.0}]
    row = report(records, reps=500)["baselines"]["mean_n0"]
    assert row["mse"] == pytest.approx(0.0, abs=1e-12)
    assert row["mse_ci95"] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_oracle_zero_advantage_share_is_over_all_rollouts():

    # a: 4 correct rollouts, GRPO's zeros, p* = 1 (no oracle sign); b: 2 rollouts, p* = 0.5
    batch = Batch([scored_group("a", [1, 1, 1, 1], [0.0] * 4), scored_group("b", [1, 0], [0.5, -0.5])])
    m, _ = oracle_metrics(batch, {"successes": [4, 2], "samples": 4, "seconds": 0.1}, n0=4)
    assert m["oracle/zero_advantage"] == pytest.approx(4 / 6)
    assert m["oracle/sign_disagree"] == pytest.approx(0.0)  # b's two agree; a is not counted


def test_oracle_bias_buckets_are_strict_hard_below_0_3_easy_above_0_7():

    # p* = 3/10 = 0.3 and 7/10 = 0.7 exactly: in neither bucket (hard is p* < 0.3, easy p* > 0.7)
    batch = Batch([scored_group("a", [1, 0, 0, 0], [0.75, -0.25, -0.25, -0.25]), scored_group("b", [1, 1, 1, 0], [0.25, 0.25, 0.25, -0.75])])
    m, _ = oracle_metrics(batch, {"successes": [3, 7], "samples": 10, "seconds": 0.1}, n0=4, estimator="rloo")
    assert not any(k.startswith("oracle/adv_bias_") for k in m)
