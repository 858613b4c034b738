"""V0.5 statistics: the fixed and the calibrated fuse, the calibration, and OSLA allocation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr.algorithms import compute_advantages, v05
from rlvr.algorithms.v05 import ACCEPTED, REJECTED, SHRUNK, V05Calibration

FAST = settings(max_examples=25, deadline=None)
K_OVER_N = [(1, 4), (2, 4), (3, 4), (1, 8), (5, 8), (3, 12), (9, 16)]  # successes, counts with k/n in the prior range
RULES = [pytest.param({"calibrate": False}, id="fixed"), pytest.param({"pool": False}, id="calibrated-nopool")]


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def synthetic_batch(size: int, h: float, sd: float, n: int = 4, seed: int = 0):
    """p ~ Beta(0.7, 0.7); prior p + N(0, sd²), or uniform noise for a fraction h; n rollouts."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.7, 0.7, size)
    junk = rng.random(size) < h
    prior = np.clip(np.where(junk, rng.random(size), p + rng.normal(0.0, sd, size)), 0.02, 0.98)
    successes = (rng.random((size, n)) < p[:, None]).sum(-1)
    p, prior, successes = (torch.from_numpy(np.asarray(x, dtype=np.float64)) for x in (p, prior, successes))
    return p, prior, successes, torch.full((size,), float(n), dtype=torch.float64)


def a_calibration(**overrides) -> V05Calibration:
    values = dict(pop_mean=0.45, pop_var=0.08, prior_err_sd=0.1, invalid_rate=0.1) | overrides
    return V05Calibration(**{k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()})


@st.composite
def prompt_batch(draw, max_size=24):
    size = draw(st.integers(2, max_size))
    counts = draw(st.lists(st.sampled_from([4, 8, 12, 16]), min_size=size, max_size=size))
    successes = [draw(st.integers(0, n)) for n in counts]
    prior = draw(st.lists(st.floats(0.02, 0.98), min_size=size, max_size=size))
    return t(*prior), t(*successes), t(*counts)


# ---------------------------------------------------------------- fixed rule, by hand


def test_fixed_rule_hand_examples():
    # p0 = 0.5, n = 4: σ0² = 1/16. k = 3: z² = 1 ≤ c, accepted. k = 4: z² = 4 > 1.96², rejected.
    # p0 = 0.7, k = 4: z² = 0.09/0.0525 = 1.714, shrunk: λ = 1/z², b = 0.7 + (1 − λ)·0.3.
    b, diag = v05.fuse(t(0.5, 0.5, 0.7), t(3, 4, 4), t(4, 4, 4), calibrate=False)
    z2 = 0.09 / (0.21 / 4)
    torch.testing.assert_close(diag["z2"], t(1.0, 4.0, z2))
    torch.testing.assert_close(b, t(0.5, 1.0, 0.7 + (1 - 1 / z2) * 0.3))
    torch.testing.assert_close(diag["lam"], t(1.0, 0.0, 1 / z2))
    assert diag["decision"].tolist() == [ACCEPTED, REJECTED, SHRUNK]


def test_fixed_rule_predicted_mse_by_hand():
    # shrunk prompt above: σ² = p̃(1−p̃)/n with p̃ = 4.5/5, δ² = max(0, 0.09 − σ²)
    _, diag = v05.fuse(t(0.7), t(4), t(4), calibrate=False)
    lam, sigma2 = 1 / (0.09 / 0.0525), 0.9 * 0.1 / 4
    expected = lam**2 * (0.09 - sigma2) + (1 - lam) ** 2 * sigma2
    torch.testing.assert_close(diag["mse"], t(expected))


def test_prior_is_clipped_to_its_range():
    b, _ = v05.fuse(t(0.0), t(0), t(4), calibrate=False)
    assert float(b) == pytest.approx(0.02)


# ---------------------------------------------------------------- fuse: limits


@pytest.mark.parametrize("rule", RULES)
@FAST
@given(st.sampled_from(K_OVER_N), st.floats(0.01, 0.5), st.floats(0.0, 1.0))
def test_fuse_returns_prior_when_p_hat_equals_prior(rule, kn, tau, invalid_rate):
    k, n = kn
    cal = a_calibration(prior_err_sd=tau, invalid_rate=invalid_rate)
    b, _ = v05.fuse(t(k / n), t(k), t(n), calibration=cal, **rule)
    torch.testing.assert_close(b, t(k / n))


@FAST
@given(st.sampled_from(K_OVER_N), st.floats(0.05, 0.95), st.floats(0.01, 0.5), st.floats(0.0, 1.0))
def test_pooled_fuse_with_p_hat_equal_prior_lies_between_prior_and_batch_mean(kn, pop_mean, tau, invalid_rate):
    k, n = kn
    cal = a_calibration(pop_mean=pop_mean, prior_err_sd=tau, invalid_rate=invalid_rate)
    b, _ = v05.fuse(t(k / n), t(k), t(n), calibration=cal)
    lo, hi = min(k / n, pop_mean), max(k / n, pop_mean)
    assert lo - 1e-12 <= float(b) <= hi + 1e-12


@pytest.mark.parametrize("rule", RULES)
def test_fuse_returns_p_hat_when_prior_rejected(rule):
    prior, successes, counts = t(0.9, 0.1, 0.95, 0.5), t(0, 8, 1, 2), t(12, 8, 12, 4)
    b, diag = v05.fuse(prior, successes, counts, calibration=a_calibration(), **rule)
    rejected = diag["decision"] == REJECTED
    assert rejected[:3].all()
    torch.testing.assert_close(b[rejected], (successes / counts)[rejected])


def test_pooled_fuse_rejection_falls_back_to_the_batch_population():
    cal = a_calibration()
    prior, successes, counts = t(0.9, 0.1), t(0, 8), t(12, 8)
    b, diag = v05.fuse(prior, successes, counts, calibration=cal)
    assert (diag["decision"] == REJECTED).all()
    s_pop = 0.45 * 0.55 / 0.08 - 1
    torch.testing.assert_close(b, (successes + s_pop * 0.45) / (counts + s_pop))


@FAST
@given(prompt_batch())
def test_calibrated_fuse_is_a_convex_combination(batch):
    prior, successes, counts = batch
    b, diag = v05.fuse(prior, successes, counts)
    assert torch.all((diag["lam"] >= 0) & (diag["lam"] <= 1))
    assert torch.all((b >= 0) & (b <= 1))
    lo = torch.minimum(diag["b_valid"], diag["b_invalid"]) - 1e-12
    hi = torch.maximum(diag["b_valid"], diag["b_invalid"]) + 1e-12
    assert torch.all((b >= lo) & (b <= hi))
    assert torch.all(diag["mse"] >= 0)


def test_calibration_learns_how_far_to_trust_the_prior():
    _, prior, k, n = synthetic_batch(1000, h=0.0, sd=0.05)
    good = v05.fit_calibration(prior, k, n)
    _, prior_u, k_u, n_u = synthetic_batch(1000, h=1.0, sd=0.05, seed=1)
    useless = v05.fit_calibration(prior_u, k_u, n_u)
    assert float(good.prior_err_sd) < 0.1 and float(good.invalid_rate) <= 0.05
    assert float(useless.invalid_rate) >= 0.5 or float(useless.prior_err_sd) >= 0.3
    _, diag_good = v05.fuse(prior, k, n)
    _, diag_useless = v05.fuse(prior_u, k_u, n_u)
    assert (diag_good["decision"] == ACCEPTED).double().mean() > 0.9
    assert (diag_useless["decision"] == ACCEPTED).sum() == 0


def test_calibrated_beats_fixed_rule_on_a_useless_prior():
    p, prior, k, n = synthetic_batch(2000, h=1.0, sd=0.1, seed=2)
    mse = {name: float(((v05.fuse(prior, k, n, **rule)[0] - p) ** 2).mean()) for name, rule in
           {"fixed": {"calibrate": False}, "calibrated": {}}.items()}
    group_mean = float(((k / n - p) ** 2).mean())
    assert mse["calibrated"] < group_mean < mse["fixed"]


def test_leading_dims_are_independent_batches():
    _, p1, k1, n1 = synthetic_batch(64, h=0.0, sd=0.05, seed=3)
    _, p2, k2, n2 = synthetic_batch(64, h=1.0, sd=0.05, seed=4)
    b, diag = v05.fuse(torch.stack([p1, p2]), torch.stack([k1, k2]), torch.stack([n1, n2]))
    for row, (p, k, n) in enumerate([(p1, k1, n1), (p2, k2, n2)]):
        b_row, diag_row = v05.fuse(p, k, n)
        torch.testing.assert_close(b[row], b_row)
        torch.testing.assert_close(diag["invalid_rate"][row], diag_row["invalid_rate"])


def test_fuse_validates_inputs():
    with pytest.raises(ValueError, match="counts"):
        v05.fuse(t(0.5), t(0), t(0))
    with pytest.raises(ValueError, match="successes"):
        v05.fuse(t(0.5), t(5), t(4))
    with pytest.raises(ValueError, match="shape"):
        v05.fuse(t(0.5, 0.5), t(1), t(4))


def test_a_value_model_s_nan_is_the_uninformed_prior_not_a_poisoned_window():
    """A NaN prior made its baseline NaN and, while in the 256-prompt window, every calibration
    likelihood NaN (argmax then trusted useless priors for ~32 steps). The sampler replaces it and
    counts it; the algorithm refuses it outright."""
    import math

    from rlvr.sampling.adaptive import finite_priors

    prior, unc, real = finite_priors([0.3, math.nan, 0.9, 0.4], [0.2, 0.1, math.inf, 0.3])
    assert real.tolist() == [True, False, False, True] and prior.tolist() == [0.3, 0.5, 0.5, 0.4] and unc.tolist() == [0.2, 0.5, 0.5, 0.3]
    with pytest.raises(ValueError, match="priors must be finite"):
        v05.fuse(torch.tensor([0.3, math.nan]), torch.tensor([1.0, 2.0]), torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError, match="uncertainties must be finite"):
        v05.V05Baseline(delta=4, n_max=16, kappa=1e-3, window=8, use_uncertainty=True).fuse(torch.tensor([0.3, 0.5]), torch.tensor([1.0, 2.0]), torch.tensor([4.0, 4.0]),
                                               uncertainty=torch.tensor([0.1, math.nan]))


@pytest.mark.parametrize("kw", [{}, {"use_uncertainty": True}, {"calibrate": False}], ids=["calibrated", "uncertainty", "fixed"])
def test_a_stand_in_prior_is_rejected_not_trusted_by_a_window_that_learned_to_trust(kw):
    """The value server down (or its answer not finite), the sampler stands in 0.5. A window of good
    priors accepted that stand-in like any prior: b ≈ 0.5 for 0/4 and 4/4 alike, and no extra
    rollouts. Uninformed, the prior is rejected outright, stays out of the calibration and the window,
    and the prompt may buy rollouts."""
    est = new_baseline(window=256, **kw)
    _, prior, k, n = synthetic_batch(248, 0.0, 0.05, seed=3)
    est.observe(prior, k, n, torch.full_like(prior, 0.3))
    stand_in, k_now, n_now = torch.full((6,), 0.5, dtype=torch.float64), t(0, 0, 4, 4, 1, 3), torch.full((6,), 4.0, dtype=torch.float64)
    unc = torch.full((6,), 0.5, dtype=torch.float64)
    informed = torch.tensor([False, True, False, True, False, True])
    trusted, d_trusted = est.fuse(stand_in, k_now, n_now, uncertainty=unc, record=False)
    assert float(trusted[0]) > 0.3 or not kw.get("calibrate", True)  # the defect: 0/4 given b near the stand-in
    b, diag = est.fuse(stand_in, k_now, n_now, uncertainty=unc, informed=informed, record=False)
    assert (diag["decision"][~informed] == REJECTED).all()
    for i in (0, 2, 4):  # the prompt's own or population-shrunk estimate
        expected = float(k_now[i] / n_now[i]) if not kw.get("calibrate", True) else float(diag["b_invalid"][i])
        assert float(b[i]) == pytest.approx(expected, abs=1e-6)
    assert float(b[0]) < 0.2 and float(b[2]) > 0.8
    # the informed prompts are judged as before (the stand-ins stay out of the calibration's pool)
    extra = est.allocate(stand_in, k_now, n_now, 64, uncertainty=unc, informed=informed, max_chunks=None)
    assert bool((extra[~informed] > 0).any())
    window = len(est)
    est.fuse(stand_in, k_now, n_now, uncertainty=unc, informed=informed)
    assert len(est) == min(256, window + 3)  # only the informed three enter the window


def test_fused_baseline_feeds_the_v05_estimator():
    prior, successes, counts = t(0.7, 0.5), t(4, 2), t(4, 4)
    b, _ = v05.fuse(prior, successes, counts, calibrate=False)
    rewards = t(1, 1, 1, 1, 1, 0, 1, 0)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    torch.testing.assert_close(compute_advantages("v05", rewards, ids, baselines=b), rewards - b[ids])


# ---------------------------------------------------------------- allocate


@pytest.mark.parametrize("rule", [{"calibrate": False}, {}, {"pool": False}], ids=["fixed", "calibrated", "nopool"])
@FAST
@given(prompt_batch(), st.one_of(st.none(), st.integers(0, 40)), st.sampled_from([2, 4]), st.sampled_from([8, 16]))
def test_allocate_respects_n_max_budget_and_accepted_priors(rule, batch, budget, delta, n_max):
    prior, successes, counts = batch
    counts = counts.clamp(max=n_max)
    successes = successes.clamp(max=counts)
    extra = v05.allocate(prior, successes, counts, delta=delta, n_max=n_max, budget=budget, **rule)
    assert extra.dtype == torch.long
    assert torch.all(extra >= 0) and torch.all(extra % delta == 0)
    assert torch.all(counts + extra <= n_max)
    if budget is not None:
        assert int(extra.sum()) <= budget
    _, diag = v05.fuse(prior, successes, counts, **rule)
    assert torch.all(extra[diag["decision"] == ACCEPTED] == 0)


def test_allocate_buys_nothing_for_accepted_prior_hand_example():
    # p0 = 0.5 with 2/4 (z² = 0, accepted) and p0 = 0.1 with 2/4 (z² = 7.1, rejected)
    extra = v05.allocate(t(0.5, 0.1), t(2, 2), t(4, 4), calibrate=False)
    assert extra.tolist() == [0, 12]


def test_allocate_greedy_prefers_the_larger_gain():
    # Both rejected, so MSE = p̃(1−p̃)/n. First chunk at p̂ = 2/4: 1/16 − 1/32 = 0.031;
    # first chunk at p̂ = 0/4: 0.1·0.9/4 − (0.5/9)(8.5/9)/8 = 0.016; second at 2/4: 1/32 − 1/48 = 0.010.
    extra = v05.allocate(t(0.1, 0.6), t(2, 0), t(4, 4), budget=4, calibrate=False)
    assert extra.tolist() == [4, 0]
    extra = v05.allocate(t(0.1, 0.6), t(2, 0), t(4, 4), budget=8, calibrate=False)
    assert extra.tolist() == [4, 4]
    extra = v05.allocate(t(0.1, 0.6), t(2, 0), t(4, 4), budget=12, calibrate=False)
    assert extra.tolist() == [8, 4]


def test_allocate_kappa_and_max_chunks():
    prior, successes, counts = t(0.1, 0.6), t(2, 0), t(4, 4)
    assert v05.allocate(prior, successes, counts, kappa=1.0, calibrate=False).sum() == 0
    assert v05.allocate(prior, successes, counts, max_chunks=1, calibrate=False).tolist() == [4, 4]
    assert v05.allocate(prior, successes, t(16, 16), calibrate=False).sum() == 0


def test_allocate_spends_on_unreliable_priors_only():
    _, prior, k, n = synthetic_batch(256, h=0.0, sd=0.05, seed=5)
    _, prior_u, k_u, n_u = synthetic_batch(256, h=1.0, sd=0.05, seed=6)
    assert v05.allocate(prior, k, n).sum() < 0.05 * 256 * 4
    extra_u = v05.allocate(prior_u, k_u, n_u, budget=512)
    assert int(extra_u.sum()) == 512


def test_allocate_budget_per_batch_row():
    _, prior, k, n = synthetic_batch(128, h=1.0, sd=0.05, seed=7)
    rows = lambda x: x.view(2, 64)  # noqa: E731
    extra = v05.allocate(rows(prior), rows(k), rows(n), budget=torch.tensor([16, 40]))
    assert extra.sum(-1).tolist() == [16, 40]


# ---------------------------------------------------------------- V05Baseline: calibration across steps


def drive(baseline: v05.V05Baseline, steps: range, seed: int = 3, h: float = 0.1, g: int = 8) -> list:
    """Steps as the controller runs them: n0 = 4, two OSLA rounds of one chunk, budget 1.5x, fuse.
    Each step's draws depend on (seed, step) only, so a resumed range replays the same data."""
    out = []
    for step in steps:
        rng = np.random.default_rng([seed, step])
        p, prior, k, n = synthetic_batch(g, h, 0.1, seed=seed * 1000 + step)
        unc = torch.from_numpy(rng.uniform(0.1, 0.4, g))
        budget = 16
        for _ in range(2):
            extra = baseline.allocate(prior, k, n, budget, uncertainty=unc)
            k = k + torch.from_numpy(rng.binomial(extra.numpy(), p.numpy())).double()
            n, budget = n + extra, budget - int(extra.sum())
        b, diag = baseline.fuse(prior, k, n, uncertainty=unc)
        out.append((n, b, diag["decision"]))
    return out


def new_baseline(window: int = 64, **kw) -> v05.V05Baseline:
    return v05.V05Baseline(delta=4, n_max=16, kappa=1e-3, window=window, **kw)


@pytest.mark.parametrize("kw", [{}, {"use_uncertainty": True}, {"calibrate": False}], ids=["calibrated", "uncertainty", "fixed"])
def test_v05_baseline_state_round_trips_and_resumed_decisions_are_identical(kw, tmp_path):
    expected = drive(new_baseline(**kw), range(12))
    first = new_baseline(**kw)
    drive(first, range(6))
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = new_baseline(**kw)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    assert len(resumed) == len(first) == 48
    for (n1, b1, d1), (n2, b2, d2) in zip(expected[6:], drive(resumed, range(6, 12))):
        assert torch.equal(n1, n2) and torch.equal(b1, b2) and torch.equal(d1, d2)
    # and the state matters: a fresh estimator decides differently on the same steps
    fresh = drive(new_baseline(**kw), range(6, 12))
    if kw.get("calibrate", True):
        assert any(not torch.equal(b1, b2) for (_, b1, _), (_, b2, _) in zip(expected[6:], fresh))


def test_v05_baseline_window_holds_the_current_step_and_the_most_recent_history():
    window, g = 20, 8
    baseline = new_baseline(window=window)
    steps = [synthetic_batch(g, 0.1, 0.1, seed=s)[1:] for s in range(4)]
    for prior, k, n in steps[:3]:
        baseline.fuse(prior, k, n)
    assert len(baseline) == window  # 24 seen, the oldest 4 dropped
    prior, k, n = steps[3]
    pooled = [torch.cat([x, torch.cat([s[i] for s in steps[:3]])[-(window - g):]]) for i, x in enumerate((prior, k, n))]
    want = v05.fit_calibration(*pooled)
    _, diag = baseline.fuse(prior, k, n)
    for field in ("pop_mean", "pop_var", "prior_err_sd", "invalid_rate"):
        assert torch.equal(diag[field], getattr(want, field)), field
    # the current step counts from the very first step on: an empty history calibrates on it alone
    first = new_baseline(window=window)
    _, diag = first.fuse(*steps[0])
    assert torch.equal(diag["prior_err_sd"], v05.fit_calibration(*steps[0]).prior_err_sd)
    # and the window's prompts steer the allocation: same step, different history, different buy
    extra = [new_baseline(window=window).allocate(prior, k, n, None)]
    primed = new_baseline(window=window)
    for prior_h, k_h, n_h in steps[:3]:
        primed.observe(prior_h, k_h, n_h)
    extra.append(primed.allocate(prior, k, n, None))
    assert torch.equal(extra[1], v05.allocate(prior, k, n, 4, 16, 1e-3, calibration=want, max_chunks=1))


def test_v05_baseline_with_calibrate_false_keeps_the_fixed_rule_limits():
    baseline = new_baseline(calibrate=False)
    b, diag = baseline.fuse(t(0.5, 0.9), t(2, 0), t(4, 4))
    assert float(b[0]) == 0.5 and int(diag["decision"][0]) == ACCEPTED  # p̂ = p0: the prior
    assert float(b[1]) == 0.0 and int(diag["decision"][1]) == REJECTED  # far off: the rollouts
    assert torch.equal(b, v05.fuse(t(0.5, 0.9), t(2, 0), t(4, 4), calibrate=False)[0])


def test_v05_baseline_constant_uncertainty_changes_nothing():
    p, prior, k, n = synthetic_batch(8, 0.1, 0.1, seed=5)
    plain, scaled = new_baseline(), new_baseline(use_uncertainty=True)
    for s in range(3):
        _, prior_s, k_s, n_s = synthetic_batch(8, 0.1, 0.1, seed=s)
        plain.fuse(prior_s, k_s, n_s)
        scaled.fuse(prior_s, k_s, n_s, uncertainty=torch.full((8,), 0.3, dtype=torch.float64))
    b1, _ = plain.fuse(prior, k, n)
    b2, _ = scaled.fuse(prior, k, n, uncertainty=torch.full((8,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(b1, b2)
    with pytest.raises(ValueError, match="uncertainty"):
        scaled.fuse(prior, k, n, uncertainty=t(0.1, 0.2))
    with pytest.raises(ValueError, match="window"):
        new_baseline(window=0)


@pytest.mark.parametrize("kw", [{}, {"use_uncertainty": True}], ids=["calibrated", "uncertainty"])
def test_no_informed_prior_and_an_empty_window_still_gives_finite_baselines(kw):
    """The value server down at step 1 with no warm-up (or after a warm-up whose priors were all
    non-finite): the informed pool was empty, its moments NaN, so every b and advantage was NaN and
    OSLA bought nothing. The population's moments come from every prompt's outcomes now."""
    stand_in, k, n = torch.full((4,), 0.5, dtype=torch.float64), t(0, 1, 3, 4), torch.full((4,), 4.0, dtype=torch.float64)
    unc = torch.full((4,), 0.3, dtype=torch.float64)
    for informed in (torch.zeros(4, dtype=torch.bool), torch.tensor([True, False, False, False])):
        fresh = new_baseline(window=256, **kw)
        extra = fresh.allocate(stand_in, k, n, 64, uncertainty=unc, informed=informed, max_chunks=None)
        b, diag = fresh.fuse(stand_in, k, n, uncertainty=unc, informed=informed)
        assert torch.isfinite(b).all() and (diag["decision"][~informed] == REJECTED).all()
        assert float(b[0]) < 0.2 and float(b[3]) > 0.8  # each prompt's own outcomes, shrunk, not one population value
        assert bool((extra[~informed] > 0).any())  # uncertain prompts may buy rollouts
        assert len(fresh) == int(informed.sum())  # the stand-ins stay out of the window


# ---- found surviving mutants (2026-12-07): each pins a formula by hand that no earlier test reached --


def test_the_fixed_rule_tests_two_sided_at_alpha():
    b, diag = v05.fuse(t(0.5), t(9), t(12), calibrate=False)  # z² = 3.0 < 1.96² = 3.84 (one-sided: 2.71): shrunk
    assert int(diag["decision"]) == SHRUNK and float(b) == pytest.approx(0.5 + (1 - 1 / 3) * 0.25)


def test_the_fixed_rule_s_bias_estimate_is_clamped_at_zero():
    _, diag = v05.fuse(t(0.95), t(3), t(4), calibrate=False)
    lam = (0.0475 / 4) / 0.04  # 1/z²
    sigma2 = 0.7 * 0.3 / 4  # p̃ = 3.5/5; (p̂ − p0)² = 0.04 < σ²: δ² = 0
    assert float(diag["mse"]) == pytest.approx((1 - lam) ** 2 * sigma2)


def test_the_population_variance_subtracts_the_unbiased_binomial_noise():
    c = v05.fit_calibration(t(0.5, 0.5, 0.5), t(0, 2, 4), t(4, 4, 4))
    assert float(c.pop_var) == pytest.approx(1 / 6 - 0.25 / 3 / 3)  # var(p̂) − mean(p̂(1−p̂)/(n−1)) = 5/36


def _valid_prior(p0, k, n, m=0.45, v=0.08, tau=0.1):
    """`a_calibration()`'s valid-prior posterior by hand: α, μ, s and the posterior mean."""
    alpha = v / (v + tau**2)
    mu = alpha * p0 + (1 - alpha) * m
    s = mu * (1 - mu) / (tau**2 * v / (tau**2 + v)) - 1
    return alpha, mu, s, (k + s * mu) / (n + s)


def test_the_calibrated_valid_prior_and_lambda_by_hand():
    alpha, _, s, b_valid = _valid_prior(0.6, 2, 4)
    _, diag = v05.fuse(t(0.6), t(2), t(4), calibration=a_calibration())
    w = float(diag["p_invalid"])  # 0.063: between α and 1 − α, not snapped
    assert float(diag["b_valid"]) == pytest.approx(b_valid, rel=1e-9)  # 0.57235
    assert float(diag["lam"]) == pytest.approx((1 - w) * alpha * s / (4 + s), rel=1e-9)  # 0.72286
    assert float(diag["z2"]) == pytest.approx(0.01 / (0.24 / 4))  # the logged statistic is the fixed rule's


def test_an_undecided_test_is_not_snapped_and_the_mse_is_the_mixture_s_variance():
    b, diag = v05.fuse(t(0.7), t(0), t(4), calibration=a_calibration())
    w, bv, bi = float(diag["p_invalid"]), float(diag["b_valid"]), float(diag["b_invalid"])
    assert 0.05 < w < 0.95 and int(diag["decision"]) == SHRUNK  # w = 0.5995
    assert float(b) == pytest.approx((1 - w) * bv + w * bi)  # 0.32315
    s, s_pop = _valid_prior(0.7, 0, 4)[2], 0.45 * 0.55 / 0.08 - 1
    var_v, var_i = bv * (1 - bv) / (4 + s + 1), bi * (1 - bi) / (4 + s_pop + 1)
    assert float(diag["mse"]) == pytest.approx((1 - w) * var_v + w * var_i + w * (1 - w) * (bv - bi) ** 2)  # 0.05697


def test_an_unpooled_rejected_prior_s_variance_uses_the_smoothed_rate():
    """A 0/n prompt does not read as certain (DESIGN's variance plug-ins)."""
    _, diag = v05.fuse(t(0.9), t(0), t(12), calibration=a_calibration(), pool=False)
    assert int(diag["decision"]) == REJECTED
    p = 0.5 / 13
    assert float(diag["mse"]) == pytest.approx(p * (1 - p) / 12)


def test_allocate_s_threshold_is_kappa_times_delta():
    # gains 0.03125 then 0.0104 (rejected, p̃ = ½): neither exceeds κΔ = 0.04; both exceed κ = 0.01
    assert v05.allocate(t(0.1), t(2), t(4), kappa=0.01, calibrate=False).tolist() == [0]


def test_allocate_s_chunks_are_per_prompt_not_limited_by_the_fullest_prompt():
    assert v05.allocate(t(0.1, 0.1), t(2, 8), t(4, 16), calibrate=False).tolist() == [12, 0]


def test_allocate_stops_at_the_first_chunk_that_does_not_pay():
    # shrunk, gains 0.00088, 0.00868, 0.00423: the first is below κΔ = 0.004, so nothing is bought
    assert v05.allocate(t(0.05), t(1), t(4), calibrate=False).tolist() == [0]


def test_calibrated_allocate_buys_nothing_for_an_accepted_prior_and_may_for_a_passed_but_weak_one():
    """DESIGN: extra rollouts go only where the test says the prior cannot be trusted; a prior that
    passed with λ < ½ is logged as shrunk and may still buy."""
    c = a_calibration(prior_err_sd=0.2, invalid_rate=0.005, pop_var=0.2)
    _, d = v05.fuse(t(0.4), t(4), t(4), calibration=c)
    assert int(d["decision"]) == ACCEPTED
    assert v05.allocate(t(0.4), t(4), t(4), calibration=c).tolist() == [0]
    c = a_calibration(prior_err_sd=0.3, invalid_rate=0.005, pop_var=0.2)
    _, d = v05.fuse(t(0.1), t(4), t(4), calibration=c)
    assert int(d["decision"]) == SHRUNK and float(d["p_invalid"]) <= 0.05  # passed, λ = 0.20 < ½
    assert v05.allocate(t(0.1), t(4), t(4), calibration=c).sum() > 0
