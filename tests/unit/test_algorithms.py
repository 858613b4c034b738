"""Estimators, weightings, losses, DAPO parts, presets and metrics of rlvr.algorithms."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr.algorithms import (
    AGGREGATIONS,
    ESTIMATORS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    WEIGHTINGS,
    HADWState,
    aggregate,
    apply_weighting,
    compute_advantages,
    dynamic_sampling_keep_mask,
    kl_penalty,
    mask_truncated,
    overlong_penalty,
    pass_at_k,
    policy_loss,
    v05,
)

FAST = settings(max_examples=40, deadline=None)


def t(*values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


# ---------------------------------------------------------------- hypothesis strategies


@st.composite
def grouped_rewards(draw, min_size=1, binary=False):
    """rewards float64[N], group_ids long[N] for 1..6 groups of min_size..8 rollouts."""
    sizes = draw(st.lists(st.integers(min_size, 8), min_size=1, max_size=6))
    values = st.sampled_from([0.0, 1.0]) if binary else st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])
    rewards = [draw(values) for _ in range(sum(sizes))]
    ids = [g for g, size in enumerate(sizes) for _ in range(size)]
    return torch.tensor(rewards, dtype=torch.float64), torch.tensor(ids)


def per_group(values: torch.Tensor, ids: torch.Tensor) -> list[torch.Tensor]:
    return [values[ids == g] for g in ids.unique()]


# ---------------------------------------------------------------- estimators


def test_grpo_hand_example():
    rewards, ids = t(1, 0, 0, 1, 1, 1, 1, 1), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    # group 0: mean 0.5, unbiased std sqrt(4·0.25/3) = 0.57735; group 1: all equal.
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    adv = compute_advantages("grpo", rewards, ids)
    torch.testing.assert_close(adv, t(expected, -expected, -expected, expected, 0, 0, 0, 0))


def test_drgrpo_and_rloo_hand_example():
    rewards, ids = t(1, 0, 0, 1, 0, 0, 1), torch.tensor([0, 0, 0, 0, 1, 1, 1])
    drgrpo = compute_advantages("drgrpo", rewards, ids)
    torch.testing.assert_close(drgrpo, t(0.5, -0.5, -0.5, 0.5, -1 / 3, -1 / 3, 2 / 3))
    # leave-one-out by hand: 1 − mean(0, 0, 1) = 2/3; 0 − mean(1, 0, 1) = −2/3; group 1: 0 − ½, 1 − 0
    rloo = compute_advantages("rloo", rewards, ids)
    torch.testing.assert_close(rloo, t(2 / 3, -2 / 3, -2 / 3, 2 / 3, -0.5, -0.5, 1.0))


def test_v05_estimator_hand_example():
    rewards, ids = t(1, 0, 1, 1), torch.tensor([0, 0, 1, 1])
    b = t(0.25, 0.5)
    torch.testing.assert_close(compute_advantages("v05", rewards, ids, baselines=b), t(0.75, -0.25, 0.5, 0.5))
    scaled = compute_advantages("v05", rewards, ids, baselines=b, scale_by_std=True)
    sd0, sd1 = math.sqrt(0.25 * 0.75) + 1e-6, 0.5 + 1e-6
    torch.testing.assert_close(scaled, t(0.75 / sd0, -0.25 / sd0, 0.5 / sd1, 0.5 / sd1))


def test_v05_estimator_rejects_ids_outside_baselines():
    with pytest.raises(ValueError, match="index baselines"):
        compute_advantages("v05", t(1, 0), torch.tensor([0, 2]), baselines=t(0.5, 0.5))


def test_singletons_and_noncontiguous_ids():
    rewards, ids = t(1, 0, 1, 0.0), torch.tensor([7, 7, 3, 42])
    torch.testing.assert_close(compute_advantages("grpo", rewards, ids)[2:], t(0, 0))
    torch.testing.assert_close(compute_advantages("rloo", rewards, ids), t(1, -1, 0, 0))


@FAST
@given(grouped_rewards(), st.lists(st.floats(-5, 5), min_size=6, max_size=6))
def test_grpo_zero_sum_per_group_and_shift_invariant(data, shifts):
    rewards, ids = data
    adv = compute_advantages("grpo", rewards, ids)
    for group_adv in per_group(adv, ids):
        assert abs(float(group_adv.sum())) < 1e-6
    shifted = rewards + torch.tensor(shifts, dtype=torch.float64)[ids]
    torch.testing.assert_close(compute_advantages("grpo", shifted, ids), adv, atol=1e-5, rtol=1e-5)


@FAST
@given(grouped_rewards(min_size=2))
def test_rloo_is_n_over_n_minus_1_times_drgrpo(data):
    rewards, ids = data
    counts = torch.bincount(ids).to(torch.float64)[ids]
    expected = counts / (counts - 1) * compute_advantages("drgrpo", rewards, ids)
    torch.testing.assert_close(compute_advantages("rloo", rewards, ids), expected)


@FAST
@given(st.integers(1, 8), st.sampled_from([0.0, 1.0]), st.floats(0.02, 0.98))
def test_all_equal_group_zero_for_grpo_but_not_v05(size, reward, baseline):
    rewards, ids = torch.full((size,), reward, dtype=torch.float64), torch.zeros(size, dtype=torch.long)
    assert torch.all(compute_advantages("grpo", rewards, ids) == 0)
    adv = compute_advantages("v05", rewards, ids, baselines=t(baseline))
    torch.testing.assert_close(adv, rewards - baseline)
    assert torch.all(adv != 0)


@FAST
@given(st.integers(1, 64), st.floats(-2.0, 2.0, width=32), st.lists(st.floats(-2.0, 2.0, width=32), min_size=2, max_size=8))
def test_a_group_of_equal_float32_rewards_gets_exactly_zero(size, reward, others):
    """Shaped rewards (partial credit, a format bonus) are not 0/1: a float32 group sum of 16 × 0.7 was
    off by 1e-8, and GRPO's 1/(std + ε) made that A ≈ 0.1, one sign for the whole group."""
    rewards = torch.tensor([reward] * size + others, dtype=torch.float32)
    ids = torch.tensor([0] * size + [1] * len(others))
    for name in ("grpo", "drgrpo", "rloo"):
        adv = compute_advantages(name, rewards, ids)
        assert adv.dtype == torch.float32 and torch.all(adv[:size] == 0), (name, adv[:size])


def test_all_equal_group_gets_v05_signal_from_fuse():
    # prior 0.7, 4/4 correct: z² = 0.09/(0.21/4) = 1.71, shrunk: b = 0.7 + (1 − 1/1.71)·0.3 = 0.825
    b, diag = v05.fuse(t(0.7), t(4.0), t(4.0), calibrate=False)
    torch.testing.assert_close(b, t(0.825))
    assert int(diag["decision"]) == v05.SHRUNK
    adv = compute_advantages("v05", torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.long), baselines=b)
    torch.testing.assert_close(adv, torch.full((4,), 0.175, dtype=torch.float64))


# ---------------------------------------------------------------- weightings


def test_weightings_read_success_not_the_shaped_reward():
    """Under an overlong penalty a shaped group mean is negative; focal on correctness stays in
    [0, 1] and HA-DW's anchor is the batch success rate."""
    correct = t(0, 0, 1, 0, 1, 1, 1, 0)
    shaped = correct - t(0.9, 0.8, 0, 1, 0, 0, 0.5, 0)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = compute_advantages("grpo", shaped, ids)
    focal_w = apply_weighting("focal", torch.ones(8, dtype=torch.float64), correct, ids, gamma=0.5)
    torch.testing.assert_close(focal_w, t(*[math.sqrt(0.75)] * 4, *[0.5] * 4))
    assert float(apply_weighting("focal", torch.ones(8, dtype=torch.float64), shaped, ids).max()) <= 1.0
    state = HADWState(window=10)
    out = apply_weighting("hadw", adv, correct, ids, state=state, lam=1.0)
    assert state.anchor() == pytest.approx(0.5)
    assert torch.isfinite(out).all() and (out != adv).any()
    assert apply_weighting("hadw", torch.zeros(0, dtype=torch.float64), t(), torch.zeros(0, dtype=torch.long), state=state).numel() == 0
    assert len(state.history) == 1  # an empty batch leaves the anchor alone


def test_focal_hand_example():
    rewards, ids = t(1, 1, 1, 0, 1, 0, 0, 0), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = torch.ones(8, dtype=torch.float64)
    out = apply_weighting("focal", adv, rewards, ids, gamma=0.5)
    torch.testing.assert_close(out, t(*[0.5] * 4, *[math.sqrt(0.75)] * 4))


@FAST
@given(grouped_rewards(), st.floats(-3, 3))
def test_focal_gamma_zero_is_identity(data, scale):
    rewards, ids = data
    adv = compute_advantages("drgrpo", rewards, ids) * scale
    torch.testing.assert_close(apply_weighting("focal", adv, rewards, ids, gamma=0.0), adv)


def test_focal_broadcasts_over_tokens():
    rewards, ids = t(1, 0), torch.tensor([0, 0])
    adv = torch.ones(2, 3, dtype=torch.float64)
    out = apply_weighting("focal", adv, rewards, ids, gamma=1.0)
    torch.testing.assert_close(out, torch.full((2, 3), 0.5, dtype=torch.float64))


def test_hadw_hand_example():
    # group 0 hard (p̂ = 0.25), group 1 easy (p̂ = 0.75); batch mean 0.5 is the anchor.
    rewards, ids = t(1, 0, 0, 0, 1, 1, 1, 0), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    state = HADWState(window=10)
    out = apply_weighting("hadw", torch.ones(8, dtype=torch.float64), rewards, ids, state=state)
    up, down = 1.5 * math.exp(0.25), 1.5 * math.exp(-0.25)
    torch.testing.assert_close(out, t(up, down, down, down, down, down, down, up))
    assert state.state_dict() == {"window": 10, "history": [0.5], "anchor": "window", "eta": 0.1, "belief": None}


def test_hadw_ema_anchor_follows_the_published_update():
    """C⁺ = (1 − η·σ_t)·C⁻ + η·σ_t·y_t; the weights of batch t use C⁻; the first batch starts C."""
    state = HADWState(window=3, anchor="ema", eta=0.5)
    assert state.observe(0.2) == 0.2 and state.anchor() == 0.2  # σ of one batch is 0
    c_minus = state.observe(0.6)
    assert c_minus == 0.2
    sigma = 0.2  # pstdev(0.2, 0.6)
    assert state.anchor() == pytest.approx((1 - 0.5 * sigma) * 0.2 + 0.5 * sigma * 0.6)
    c2 = state.anchor()
    assert state.observe(1.0) == pytest.approx(c2)
    sigma = statistics.pstdev([0.2, 0.6, 1.0])
    assert state.anchor() == pytest.approx((1 - 0.5 * sigma) * c2 + 0.5 * sigma * 1.0)
    # the weighting reads C⁻ and moves the belief; a checkpoint carries it
    rewards, ids = t(1, 0, 0, 0, 1, 1, 1, 0), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    before = state.anchor()
    out = apply_weighting("hadw", torch.ones(8, dtype=torch.float64), rewards, ids, state=state, lam=1.0)
    torch.testing.assert_close(out[0], torch.tensor(math.exp(abs(0.25 - before)), dtype=torch.float64))
    restored = HADWState(anchor="ema", eta=0.5)
    restored.load_state_dict(state.state_dict())
    assert restored.anchor() == state.anchor() and restored.eta == 0.5
    with pytest.raises(ValueError, match="anchor"):
        HADWState(anchor="kalman")


@FAST
@given(grouped_rewards(min_size=2, binary=True), st.floats(0.05, 0.95))
def test_hadw_amplifies_and_damps_the_right_cases(data, anchor):
    rewards, ids = data
    state = HADWState(window=1)
    state.push(anchor)
    adv = compute_advantages("drgrpo", rewards, ids)
    out = apply_weighting("hadw", adv, rewards, ids, state=state, lam=1.0, update_state=False)
    p_hat = torch.zeros(int(ids.max()) + 1, dtype=torch.float64).index_add_(0, ids, rewards) / torch.bincount(ids)
    p_hat = p_hat[ids]
    mixed = adv != 0
    hard, easy = mixed & (p_hat < anchor), mixed & (p_hat > anchor)
    correct, wrong = rewards == 1, rewards == 0
    amplified = (hard & correct) | (easy & wrong)
    damped = (hard & wrong) | (easy & correct)
    assert torch.all(out[amplified].abs() > adv[amplified].abs())
    assert torch.all(out[damped].abs() < adv[damped].abs())


def test_hadw_state_window_and_checkpoint():
    state = HADWState(window=3)
    for x in (0.1, 0.2, 0.3, 0.4):
        state.push(x)
    assert state.anchor() == pytest.approx(0.3)
    restored = HADWState(window=3)
    restored.load_state_dict(state.state_dict())
    assert restored.window == 3 and list(restored.history) == pytest.approx([0.2, 0.3, 0.4])
    restored.push(1.0)
    assert list(restored.history) == pytest.approx([0.3, 0.4, 1.0])
    # the resumed run's config wins (the checkpoint's window, anchor and eta overrode it, unsaid)
    narrower = HADWState(window=2, anchor="ema", eta=0.5)
    narrower.load_state_dict(state.state_dict())
    assert (narrower.window, narrower.mode, narrower.eta, narrower.belief) == (2, "ema", 0.5, None)
    assert list(narrower.history) == pytest.approx([0.3, 0.4])
    with pytest.raises(ValueError):
        HADWState().anchor()


# ---------------------------------------------------------------- policy losses


def test_ppo_clip_hand_example():
    ratios = t(1.5, 0.5, 1.0)
    logp = ratios.log().view(1, 3)
    loss, stats = policy_loss(
        "ppo_clip", logp, torch.zeros(1, 3, dtype=torch.float64), t(1.0), torch.ones(1, 3, dtype=torch.float64),
        eps_low=0.2, eps_high=0.28,
    )
    # per token −min(ρA, clip(ρ)A): −1.28, −0.5, −1.0
    torch.testing.assert_close(loss, torch.tensor((-1.28 - 0.5 - 1.0) / 3, dtype=torch.float64))
    assert float(stats["clip_frac"]) == pytest.approx(1 / 3)
    assert float(stats["ratio_mean"]) == pytest.approx(1.0)
    assert float(stats["approx_kl"]) == pytest.approx(-float(ratios.log().mean()))


def test_ppo_dual_clip_bounds_negative_advantages():
    """verl's dual clip: for A < 0, L = min(−c·A, max(−ρA, −clip(ρ)A)); A > 0 is untouched."""
    ratios = t(5.0, 2.0, 5.0)
    logp = ratios.log().view(1, 3).requires_grad_(True)
    adv = t(-1.0, -1.0, 1.0).view(1, 3)
    per_token = []
    for c in (None, 3.0):
        kwargs = {} if c is None else {"clip_ratio_c": c}
        loss, stats = policy_loss("ppo_clip", logp, torch.zeros(1, 3, dtype=torch.float64), adv, torch.ones(1, 3, dtype=torch.float64), **kwargs)
        per_token.append(float(loss.detach()) * 3)
    # without: 5 + 2 − 1.2 ; with c = 3: min(3, 5) + 2 − 1.2
    assert per_token[0] == pytest.approx(5 + 2 - 1.2) and per_token[1] == pytest.approx(3 + 2 - 1.2)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad[0, 0] == 0 and grad[0, 1] != 0 and grad[0, 2] == 0  # the dual-clipped token gets no gradient
    assert float(stats["clip_frac"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        policy_loss("ppo_clip", logp, torch.zeros(1, 3, dtype=torch.float64), adv, torch.ones(1, 3, dtype=torch.float64), clip_ratio_c=1.0)


def test_cispo_hand_example():
    logp = t(1.5, 0.5).log().view(1, 2)
    loss, stats = policy_loss(
        "cispo", logp, torch.zeros(1, 2, dtype=torch.float64), t(2.0), torch.ones(1, 2, dtype=torch.float64),
        eps_high=0.2,
    )
    # −sg(clip(ρ, 0, 1.2))·A·logp: −1.2·2·log 1.5, −0.5·2·log 0.5
    expected = (-1.2 * 2 * math.log(1.5) - 0.5 * 2 * math.log(0.5)) / 2
    assert float(loss) == pytest.approx(expected)
    assert float(stats["clip_frac"]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(3))
def test_gspo_is_the_gradient_of_its_sequence_objective_and_clips_whole_sequences(seed):
    """GSPO-token with seq-mean-token-mean has the value and gradient of GSPO's objective
    J = mean_i min(s_i·A_i, clip(s_i, 1−ε_low, 1+ε_high)·A_i), s_i = exp(mean_t log ρ_i,t)."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(16, 7, generator=gen, dtype=torch.float64) - 0.1
    logp = (old + torch.randn(16, 7, generator=gen, dtype=torch.float64) * 1e-3).requires_grad_(True)
    adv = torch.randn(16, generator=gen, dtype=torch.float64)
    mask = torch.ones(16, 7, dtype=torch.float64)
    mask[:, 4:] = (torch.rand(16, 3, generator=gen) > 0.5).double()  # lengths 4 to 7
    eps_low, eps_high = 3e-4, 4e-4
    loss, stats = policy_loss("gspo", logp, old, adv, mask, "seq-mean-token-mean", eps_low=eps_low, eps_high=eps_high)
    loss.backward()

    x = logp.detach().clone().requires_grad_(True)
    s = torch.exp(((x - old) * mask).sum(-1) / mask.sum(-1))
    objective = torch.minimum(s * adv, s.clamp(1 - eps_low, 1 + eps_high) * adv).mean()
    (-objective).backward()
    torch.testing.assert_close(loss, -objective.detach())
    torch.testing.assert_close(logp.grad, x.grad)

    s = s.detach()
    out = ((s > 1 + eps_high) & (adv > 0)) | ((s < 1 - eps_low) & (adv < 0))
    assert 0 < int(out.sum()) < 16  # both kinds in the batch
    on = mask > 0
    for i in range(16):  # a sequence is clipped whole, and then none of its tokens has a gradient
        assert stats["clipped"][i][on[i]].all() == out[i] == stats["clipped"][i][on[i]].any()
        assert bool((logp.grad[i][on[i]] == 0).all()) == bool(out[i])
    assert float(stats["clip_frac"]) == pytest.approx(float((out[:, None] & on).sum() / on.sum()))


def test_aggregations_hand_example():
    loss = t(1, 2, 3, 4, 9, 9).view(2, 3)
    mask = t(1, 1, 1, 1, 0, 0).view(2, 3)
    assert float(aggregate(loss, mask, "token-mean")) == pytest.approx(10 / 4)
    assert float(aggregate(loss, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(aggregate(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx((6 / 3 + 4 / 3) / 2)
    assert float(aggregate(loss, mask, "seq-mean-token-sum-norm", max_len=8)) == pytest.approx((6 / 8 + 4 / 8) / 2)


def test_per_sequence_aggregations_leave_out_sequences_with_no_token():
    """As the learners' mini-batch counts do (`loss_share`): otherwise a sequence's weight would
    depend on the micro-batch it shares with an empty one."""
    loss = t(1, 2, 3, 4, 9, 9).view(3, 2)
    mask = t(1, 1, 0, 0, 1, 0).view(3, 2)
    assert float(aggregate(loss, mask, "seq-mean-token-mean")) == pytest.approx((1.5 + 9) / 2)
    assert float(aggregate(loss, mask, "seq-mean-token-sum-norm", max_len=4)) == pytest.approx((3 / 4 + 9 / 4) / 2)


def test_seq_mean_token_mean_skips_empty_sequences():
    loss, mask = t(1, 2, 5, 5).view(2, 2), t(1, 1, 0, 0).view(2, 2)
    assert float(aggregate(loss, mask, "seq-mean-token-mean")) == pytest.approx(1.5)


def test_kl_estimators_hand_example():
    logp, ref = t(math.log(0.5)), t(math.log(0.25))
    assert float(kl_penalty(logp, ref, "k1")) == pytest.approx(math.log(2))
    assert float(kl_penalty(logp, ref, "k2")) == pytest.approx(0.5 * math.log(2) ** 2)
    assert float(kl_penalty(logp, ref, "k3")) == pytest.approx(0.5 - math.log(0.5) - 1)


def test_kl_coef_adds_beta_times_aggregated_kl():
    torch.manual_seed(0)
    logp, old, ref = (torch.randn(3, 5, dtype=torch.float64) * 0.1 - 1 for _ in range(3))
    mask, adv = torch.ones(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    base, _ = policy_loss("ppo_clip", logp, old, adv, mask)
    with_kl, stats = policy_loss("ppo_clip", logp, old, adv, mask, ref_logp=ref, kl_coef=0.1, kl_estimator="k2")
    expected_kl = aggregate(kl_penalty(logp, ref, "k2"), mask, "token-mean")
    torch.testing.assert_close(stats["kl"], expected_kl)
    torch.testing.assert_close(with_kl, base + 0.1 * expected_kl)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss("ppo_clip", logp, old, adv, mask, kl_coef=0.1)


def test_a_sequence_the_mask_correction_drops_gets_no_kl_gradient():
    """The `mask` rollout correction drops a sequence from the policy loss (weight 0, still in the
    denominator); its β·KL still pulled on it. Now its KL is 0 too, under the same denominator."""
    torch.manual_seed(0)
    logp = (torch.randn(3, 5, dtype=torch.float64) * 0.1 - 1).requires_grad_()
    old, ref = (torch.randn(3, 5, dtype=torch.float64) * 0.1 - 1 for _ in range(2))
    mask, adv = torch.ones(3, 5, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    kept = mask.clone()
    kept[1] = 0
    loss, stats = policy_loss("ppo_clip", logp, old, adv, mask, ref_logp=ref, kl_coef=0.1, token_weights=kept, kept=kept)
    loss.backward()
    assert torch.all(logp.grad[1] == 0) and torch.all(logp.grad[[0, 2]] != 0)
    torch.testing.assert_close(stats["kl"], aggregate(kl_penalty(logp.detach(), ref, "k3") * kept, mask, "token-mean"))


def test_sequence_and_token_advantages_agree():
    torch.manual_seed(1)
    logp, old = torch.randn(4, 6, dtype=torch.float64) * 0.3, torch.randn(4, 6, dtype=torch.float64) * 0.3
    mask, adv = (torch.rand(4, 6) > 0.3).double(), torch.randn(4, dtype=torch.float64)
    for agg in AGGREGATIONS:
        a, _ = policy_loss("ppo_clip", logp, old, adv, mask, agg)
        b, _ = policy_loss("ppo_clip", logp, old, adv[:, None].expand(4, 6), mask, agg)
        torch.testing.assert_close(a, b)


def _random_batch(seed: int, clip_scale: float = 0.6):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(4, 7, generator=gen, dtype=torch.float64) - 0.1
    logp = (old + torch.randn(4, 7, generator=gen, dtype=torch.float64) * clip_scale).requires_grad_(True)
    adv = torch.randn(4, generator=gen, dtype=torch.float64)
    mask = (torch.rand(4, 7, generator=gen) > 0.2).double()
    return logp, old, adv, mask


@pytest.mark.parametrize("seed", range(3))
def test_cispo_gradient_is_clipped_weight_times_advantage_for_every_token(seed):
    logp, old, adv, mask = _random_batch(seed)
    eps_high = 0.3
    loss, stats = policy_loss("cispo", logp, old, adv, mask, "token-mean", eps_high=eps_high)
    loss.backward()
    ratio = torch.exp(logp.detach() - old)
    assert float(stats["clip_frac"]) > 0  # some tokens are clipped, and they keep their gradient
    expected = -ratio.clamp(max=1 + eps_high) * adv[:, None] * mask / mask.sum()
    torch.testing.assert_close(logp.grad, expected)
    clipped = (ratio > 1 + eps_high) & (mask > 0)
    assert torch.all(logp.grad[clipped] != 0)


@pytest.mark.parametrize("seed", range(3))
def test_ppo_clip_gradient_zero_where_clipped_on_the_pushing_side(seed):
    logp, old, adv, mask = _random_batch(seed)
    eps_low, eps_high = 0.2, 0.28
    loss, _ = policy_loss("ppo_clip", logp, old, adv, mask, "token-mean", eps_low=eps_low, eps_high=eps_high)
    loss.backward()
    ratio, a = torch.exp(logp.detach() - old), adv[:, None].expand_as(old)
    pushing_clipped = ((a > 0) & (ratio > 1 + eps_high)) | ((a < 0) & (ratio < 1 - eps_low))
    assert pushing_clipped.any()
    assert torch.all(logp.grad[pushing_clipped] == 0)
    active = ~pushing_clipped & (mask > 0)
    torch.testing.assert_close(logp.grad[active], (-ratio * a * mask / mask.sum())[active])


def test_policy_loss_validates_shapes():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="adv"):
        policy_loss("ppo_clip", x, x, torch.zeros(3), x)
    with pytest.raises(ValueError, match="shape"):
        policy_loss("ppo_clip", x, torch.zeros(2, 4), torch.zeros(2), x)


# ---------------------------------------------------------------- DAPO parts


def test_dynamic_sampling_keep_mask():
    rewards = t(1, 1, 1, 0, 1, 0, 0, 0, 0.5)
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 4])
    assert dynamic_sampling_keep_mask(rewards, ids).tolist() == [False, True, False, False, False]


def test_overlong_penalty_hand_example():
    lengths = torch.tensor([50, 80, 90, 100, 101])
    penalty = overlong_penalty(lengths, max_len=100, buffer=20)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0]))
    with pytest.raises(ValueError):
        overlong_penalty(lengths, max_len=100, buffer=0)


def test_overlong_default_buffer_is_dapos_share():
    from rlvr.algorithms import default_overlong_buffer

    assert default_overlong_buffer(20480) == 4096  # the recipe's own numbers
    assert default_overlong_buffer(64) == 13 and default_overlong_buffer(3) == 1
    # with the default buffer an answer of 80 % of the length pays nothing
    lengths = torch.tensor([10, 51, 52, 58, 64, 65])
    penalty = overlong_penalty(lengths, max_len=64, buffer=default_overlong_buffer(64))
    assert penalty[:2].tolist() == [0.0, 0.0] and bool((penalty[2:] < 0).all()) and penalty[-1] == -1


def test_accuracy_filter_drops_groups_mixed_only_in_reward():
    """DAPO filters on correctness: an all-wrong group whose overlong penalties differ is dropped
    on accuracy, though its shaped rewards differ."""
    correct = t(0, 0, 0, 0, 1, 0, 1, 1)
    lengths = torch.tensor([10, 60, 62, 30, 10, 10, 10, 10])
    shaped = correct + overlong_penalty(lengths, max_len=64, buffer=13)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert dynamic_sampling_keep_mask(shaped, ids).tolist() == [True, True]
    assert dynamic_sampling_keep_mask(correct, ids).tolist() == [False, True]


def test_mask_truncated():
    mask = torch.ones(2, 3)
    torch.testing.assert_close(mask_truncated(mask, torch.tensor([True, False])), torch.tensor([[0.0] * 3, [1.0] * 3]))


# ---------------------------------------------------------------- presets, registries, metrics


@pytest.mark.parametrize(
    "call",
    [
        lambda: compute_advantages("nope", t(1), torch.tensor([0])),
        lambda: apply_weighting("nope", t(1), t(1), torch.tensor([0])),
        lambda: policy_loss("nope", torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1)),
        lambda: aggregate(torch.zeros(1, 1), torch.ones(1, 1), "nope"),
        lambda: kl_penalty(torch.zeros(1), torch.zeros(1), "nope"),
    ],
)
def test_unknown_names_raise_with_known_list(call):
    with pytest.raises(ValueError, match=r"'nope'.*known: "):
        call()


def test_registries_hold_the_documented_names():
    assert set(ESTIMATORS) == {"grpo", "drgrpo", "rloo", "v05"}
    assert set(WEIGHTINGS) == {"none", "focal", "hadw"}
    assert set(POLICY_LOSSES) == {"ppo_clip", "cispo", "gspo"}
    assert set(AGGREGATIONS) == {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"}
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_pass_at_k():
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)
    assert pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(8, 0, 3) == 0.0
    assert pass_at_k(2000, 7, 100) == pytest.approx(1 - math.comb(1993, 100) / math.comb(2000, 100), rel=1e-9)
    values = pass_at_k(torch.tensor([10, 10]), torch.tensor([3, 10]), 2)
    torch.testing.assert_close(values, t(1 - 21 / 45, 1.0))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_pass_at_k_is_exact_at_the_ends_and_monotone_in_k():
    from rlvr.algorithms import pass_at_k

    assert [pass_at_k(3, 0, k) for k in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert [pass_at_k(3, 3, k) for k in (1, 2, 3)] == [1.0, 1.0, 1.0]
    for n in range(1, 12):
        for c in range(n + 1):
            values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
            assert values == sorted(values)
            assert abs(values[0] - c / n) < 1e-12


@pytest.mark.parametrize("pad", [float("-inf"), float("nan")])
@pytest.mark.parametrize("loss", ["ppo_clip", "cispo", "gspo"])
def test_what_a_masked_position_holds_never_reaches_the_loss_or_its_gradient(loss, pad):
    """(loss · mask) leaves 0 · NaN = NaN, and -inf - -inf is NaN: a pad holding -inf (top-p) or NaN
    turned every loss into NaN, CISPO's gradient too, dropped an in-range sequence from the `mask`
    correction and gave TIS a NaN weight. Today's collate pads with 0; the functions did not rely on it."""
    from rlvr.algorithms import rollout_correction

    mask = torch.tensor([[1.0, 1.0, 0.0]])
    kwargs = {"eps_high": 0.2} if loss == "cispo" else {}
    clean = torch.tensor([[-1.0, -0.5, 0.0]], requires_grad=True)
    padded = torch.tensor([[-1.0, -0.5, pad]], requires_grad=True)
    losses = []
    for logp, old in ((clean, torch.tensor([[-1.1, -0.4, 0.0]])), (padded, torch.tensor([[-1.1, -0.4, pad]]))):
        value, _ = policy_loss(loss, logp, old, torch.tensor([1.0]), mask, ref_logp=old, kl_coef=0.1, **kwargs)
        losses.append((value, torch.autograd.grad(value, logp)[0]))
    assert torch.equal(losses[0][0], losses[1][0]) and torch.equal(losses[0][1], losses[1][1])
    old, mu, m = torch.tensor([[-1.0, pad]]), torch.tensor([[-1.1, pad]]), torch.tensor([[1.0, 0.0]])
    assert rollout_correction("mask", old, mu, m)[1].tolist() == [[1.0, 0.0]]  # g = e^0.1, inside [1/2, 2]: kept
    assert torch.isfinite(rollout_correction("tis", old, mu, m)[0]).all()


def test_a_clip_range_the_loss_cannot_use_is_refused():
    """CISPO with eps_low passed validation and crashed at its first learner step (an unexpected
    keyword); eps_low=null with ppo_clip was dropped for the loss's own default 0.2."""
    from dataclasses import replace

    from rlvr.config import algorithm_preset, compose

    grpo = algorithm_preset(compose(["algorithm=grpo"]).algorithm)
    with pytest.raises(ValueError, match="cispo loss has no lower clip"):
        replace(grpo, loss="cispo")  # eps_low 0.2
    with pytest.raises(ValueError, match="ppo_clip loss needs a lower clip"):
        replace(grpo, eps_low=None)
    replace(grpo, loss="cispo", eps_low=None)


# ---- found surviving mutants (2026-12-07): each pins a formula no earlier test reached ---------------


def test_hadw_s_current_batch_enters_the_history_before_its_weights():
    """DESIGN: the current batch enters the history before advantages are computed. The first batch
    alone (every earlier test) cannot tell the two orders apart."""
    state = HADWState(window=10)
    state.push(0.0)
    rewards, ids = t(1, 0, 0, 0, 1, 1, 1, 1), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # the batch's mean 0.625
    out = apply_weighting("hadw", torch.ones(8, dtype=torch.float64), rewards, ids, state=state)
    # C = mean(0.0, 0.625) = 0.3125; group 0's p̂ = 0.25 < C: its right rollout gets 1.5·e^{0.0625}
    assert float(out[0]) == pytest.approx(1.5 * math.exp(0.0625))
    assert float(out[1]) == pytest.approx(1.5 * math.exp(-0.0625))


def test_focal_s_default_gamma_is_a_half():
    out = apply_weighting("focal", torch.ones(4, dtype=torch.float64), t(1, 1, 1, 0), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(out, torch.full((4,), 0.5, dtype=torch.float64))  # (1 − 0.75)^0.5
