"""The typed batch, the mini-batch plan, and the rollout-policy correction (pure functions)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr.algorithms import policy_loss, rollout_correction, rollout_mismatch
from rlvr.data import Problem
from rlvr.learner.plan import plan_mini_batches
from rlvr.types import Batch, PromptGroup, Trajectory


def problem(i: int) -> Problem:
    return Problem(uid=f"p{i}", question=f"q{i}", answer=str(i))


def traj(n_prompt: int, n_resp: int, reward: float = 0.0, version: int = 0) -> Trajectory:
    return Trajectory(list(range(n_prompt)), list(range(n_resp)), [-1.0] * n_resp, weight_version=version, reward=reward)


# -- the batch ------------------------------------------------------------------------------------
def test_flat_view_is_aligned_with_the_groups_by_construction():
    batch = Batch([PromptGroup(problem(0), [traj(2, 3, 1.0), traj(2, 1, 0.0)]), PromptGroup(problem(1), [traj(3, 2, 0.5)])])
    assert batch.group_ids().tolist() == [0, 0, 1]
    assert batch.rewards().tolist() == [1.0, 0.0, 0.5]
    batch.set_advantages(torch.tensor([0.5, -0.5, 0.0]))
    assert [t.advantage for t in batch.groups[0].trajectories] == [0.5, -0.5]
    assert batch.advantages().tolist() == [0.5, -0.5, 0.0]
    with pytest.raises(ValueError, match="3 trajectories"):
        batch.set_advantages(torch.zeros(2))


def test_the_step_record_describes_the_batch_and_an_empty_one_has_no_figures():
    """verl's response_length/*, prompt_length/*, critic/score/* and advantages/*, TRL's frac_reward_zero_std.
    A batch with no rollouts (DAPO found no mixed group) logged a length and advantages of 0."""
    from rlvr.train.loop import step_metrics
    from rlvr.train.state import console_line

    short = traj(3, 2, 0.5)
    short.truncated = True
    batch = Batch([PromptGroup(problem(0), [traj(2, 3, 1.0), traj(2, 1, 0.0)]), PromptGroup(problem(1), [short, traj(3, 6, 0.5)])])
    batch.set_advantages(torch.tensor([0.5, -0.5, 0.0, 0.0]))
    m = step_metrics(batch, {"grad_norm": 2.0})
    assert m == pytest.approx({
        "reward": 0.5, "reward_std": math.sqrt(0.125), "reward_max": 1.0, "reward_min": 0.0, "accuracy": 0.0,
        "response_length": 3.0, "response_length_max": 6.0, "response_length_min": 1.0, "prompt_length": 2.5, "prompt_length_max": 3.0,
        "truncated_frac": 0.25, "groups_uniform_frac": 0.5, "adv_abs_mean": 0.25, "adv_max": 0.5, "adv_min": -0.5,
        "groups": 2, "learner/grad_norm": 2.0})
    three = Batch([PromptGroup(problem(0), [traj(2, 3, 1.0), traj(2, 1, 0.0)]), PromptGroup(problem(1), [traj(2, 3, 0.5), traj(2, 1, 0.5)]),
                   PromptGroup(problem(2), [traj(2, 3, 0.0), traj(2, 1, 0.0)]), PromptGroup(problem(3), [])])  # an empty group is no group
    three.set_advantages(torch.zeros(6))
    assert step_metrics(three, {})["groups_uniform_frac"] == pytest.approx(2 / 3)
    empty = step_metrics(Batch([]), {})
    assert empty["groups"] == 0 and all(math.isnan(v) for k, v in empty.items() if k != "groups")
    assert "len nan" in console_line(1, 1, empty)


def test_the_learners_get_fresh_untruncated_copies_with_the_advantages_given():
    fresh, stale, truncated = traj(2, 3, version=4), traj(2, 3, version=1), traj(2, 3, version=4)
    truncated.truncated = True
    batch = Batch([PromptGroup(problem(0), [fresh, stale, truncated])])
    batch.set_advantages(torch.tensor([0.5, -0.5, 0.25]))
    kept, m = batch.for_learners(version=4, max_staleness=2, mask_truncated=True)
    assert [t.advantage for t in kept] == [0.5] and m == {"async/stale_dropped": 1, "async/staleness_max": 0}
    kept, _ = batch.for_learners(version=4, max_staleness=3, mask_truncated=False, advantages=[1.0, 2.0, 3.0])
    assert [t.advantage for t in kept] == [1.0, 2.0, 3.0] and fresh.advantage == 0.5  # copies: the batch keeps its own


def test_a_weighting_keeps_the_estimator_s_advantages_beside_its_weights():
    from rlvr.algorithms import compute_advantages
    from rlvr.config import algorithm_preset, compose
    from rlvr.train.loop import hadw_state, set_advantages

    cfg = compose(["algorithm=dapo", "weighting=focal"])
    # an all-correct group whose shaped rewards differ (an overlong penalty): focal's weight (1 - p̂)^γ is 0,
    # the estimator's advantage is not, and the unweighted gradient must see it
    rewards = [1.0, 0.5, 1.0, 0.25]
    group = [traj(2, 3, reward=r) for r in rewards]
    for t in group:
        t.correct = True
    batch = Batch([PromptGroup(problem(0), group), PromptGroup(problem(1), [traj(2, 3, 1.0), traj(2, 3, 0.0)])])
    batch.groups[1].trajectories[0].correct = True
    preset = algorithm_preset(cfg.algorithm)
    set_advantages(batch, preset, cfg.weighting, hadw_state(cfg.weighting))
    raw = compute_advantages(preset.estimator, batch.rewards(), batch.group_ids(), **preset.estimator_kwargs())
    assert torch.allclose(batch.unweighted_advantages, raw) and raw[:4].abs().sum() > 0
    assert batch.advantages()[:4].abs().sum() == 0 and batch.advantage_weights[:4].abs().sum() == 0
    assert torch.allclose(batch.advantages(), raw * batch.advantage_weights)


def test_v05_s_baseline_is_of_the_reward_it_is_subtracted_from():
    """V0.5's b estimates P(correct); code_tests scores the share of tests passed. Four solutions
    each passing 2/3 (none correct) got A = 2/3 − 0.2 = +0.47 with b = 0.2: partial credit counted
    as success beyond the prior. b now carries the group's mean partial credit, so they get what
    four wrong answers get (−b), and a binary reward's baseline is b itself."""
    from rlvr.config import algorithm_preset, compose
    from rlvr.train.loop import hadw_state, set_advantages

    cfg = compose(["algorithm=v05"])
    partial = PromptGroup(problem(0), [traj(2, 3, reward=2 / 3) for _ in range(4)], baseline=0.2)
    binary = PromptGroup(problem(1), [traj(2, 3, reward=r) for r in (1.0, 0.0, 0.0, 0.0)], baseline=0.3)
    binary.trajectories[0].correct = True
    wrong = PromptGroup(problem(2), [traj(2, 3, reward=0.0) for _ in range(4)], baseline=0.2)
    batch = Batch([partial, binary, wrong])
    set_advantages(batch, algorithm_preset(cfg.algorithm), cfg.weighting, hadw_state(cfg.weighting))
    adv = batch.advantages()
    assert torch.allclose(adv[:4], adv[8:], atol=1e-6) and bool((adv[:4] < 0).all())
    assert adv[4] > 0 and bool((adv[5:8] < 0).all())  # 1 − 0.3 and 0 − 0.3, scaled alike
    assert float(adv[4] / adv[5]) == pytest.approx(-0.7 / 0.3)


def test_v05_s_std_scale_is_of_the_success_rate_whatever_the_shaping():
    """With scale_by_std, b(1−b) of the shaped baseline was no variance: a format bonus put b_r
    above 1, b_r(1−b_r) clamped to 0, and the advantages divided by ε came out near 1e5."""
    from rlvr.config import algorithm_preset, compose
    from rlvr.train.loop import hadw_state, set_advantages

    cfg = compose(["algorithm=v05", "algorithm.scale_by_std=true"])
    bonus = PromptGroup(problem(0), [traj(2, 3, reward=r) for r in (1.5, 1.5, 1.5, 0.5)], baseline=0.7)  # correct + 0.5 format
    for tr in bonus.trajectories[:3]:
        tr.correct = True
    batch = Batch([bonus])
    set_advantages(batch, algorithm_preset(cfg.algorithm), cfg.weighting, hadw_state(cfg.weighting))
    b_r, sd = 0.7 + 0.5, math.sqrt(0.7 * 0.3) + 1e-6
    torch.testing.assert_close(batch.advantages(), torch.tensor([1.5 - b_r] * 3 + [0.5 - b_r]) / sd)


def test_trajectory_loss_mask_defaults_to_every_token_and_must_match():
    assert traj(1, 4).loss_mask.tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="loss_mask"):
        Trajectory([1], [2, 3], loss_mask=[1.0])
    with pytest.raises(ValueError, match="rollout log-probs"):
        Trajectory([1], [2, 3], rollout_logprobs=[-0.5])


def test_token_data_is_held_as_tensors_whatever_the_constructor_got():
    t = Trajectory([5, 6], torch.tensor([7, 8, 9]), [-0.25, -1.5, -3.0])
    assert t.prompt_ids.dtype == t.response_ids.dtype == torch.long
    assert t.rollout_logprobs.dtype == t.loss_mask.dtype == torch.float32
    assert t.rollout_logprobs.tolist() == [-0.25, -1.5, -3.0] and t.num_tokens == 3
    assert t.prompt_key == (5, 6) and hash(t.prompt_key) == hash(Trajectory([5, 6], [1]).prompt_key)
    copy = t.for_learner()
    assert copy is not t and copy.response_ids.tolist() == [7, 8, 9] and copy.rollout_logprobs.tolist() == [-0.25, -1.5, -3.0]
    assert t != copy and t == t  # identity: tensors have no single truth value to compare by


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30), ranks=st.integers(1, 3), piece=st.integers(1, 5))
def test_a_cut_by_function_keeps_lockstep_padding_the_end(lengths, ranks, piece):
    """A function that cuts a rank's share (what `learner.micro_batch_size=auto` passes) gives the
    micro-batches; a rank that gets fewer ends with empty ones."""
    trajectories = [traj(2, n) for n in lengths]
    cut = lambda shard: [shard[:piece], *([shard[piece:]] if shard[piece:] else [])] if shard else []  # noqa: E731
    plans = plan_mini_batches(trajectories, 1, ranks, cut, seed=0)
    assert sorted(id(t) for p in plans for mb in p[0].micro_batches for t in mb) == sorted(id(t) for t in trajectories)
    assert len({len(p[0].micro_batches) for p in plans}) == 1
    for p in plans:
        real = [mb for mb in p[0].micro_batches if mb]
        assert p[0].micro_batches[: len(real)] == real and all(len(mb) <= piece for mb in real[:1])


def test_a_size_and_the_equivalent_cut_alike():
    trajectories = [traj(1 + i % 3, 1 + i % 7) for i in range(23)]
    by_size = plan_mini_batches(trajectories, 2, 2, 4, seed=5)
    by_cut = plan_mini_batches(trajectories, 2, 2, lambda shard: [shard[j : j + 4] for j in range(0, len(shard), 4)], seed=5)
    assert [[m.micro_batches for m in p] for p in by_size] == [[m.micro_batches for m in p] for p in by_cut]


def test_mini_batch_plan_is_seeded():
    trajectories = [traj(2, n) for n in range(1, 17)]
    ids = lambda plan: [[len(t.response_ids) for mb in m.micro_batches for t in mb] for m in plan[0]]  # noqa: E731
    assert ids(plan_mini_batches(trajectories, 4, 1, 8, seed=1)) == ids(plan_mini_batches(trajectories, 4, 1, 8, seed=1))
    assert ids(plan_mini_batches(trajectories, 4, 1, 8, seed=1)) != ids(plan_mini_batches(trajectories, 4, 1, 8, seed=2))


# -- rollout correction -----------------------------------------------------------------------------
OLD = torch.log(torch.tensor([[0.5, 0.4, 0.9], [0.2, 0.2, 0.1]]))
MU = torch.log(torch.tensor([[0.5, 0.1, 0.3], [0.2, 0.4, 0.1]]))
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_tis_weights_are_the_truncated_ratio():
    w, mask, flagged = rollout_correction("tis", OLD, MU, MASK, threshold=2.0)
    # ratios 1, 4, 3 / 1, 0.5, (1, masked)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 2.0], [1.0, 0.5, 1.0]]))
    assert torch.equal(mask, MASK)
    assert flagged.tolist() == [[False, True, True], [False, False, False]]


def test_mask_drops_sequences_whose_geometric_mean_ratio_leaves_the_band():
    # sequence 0: log g = (0 + log 4 + log 3)/3 = log(12)/3, g = 2.29 > 2: dropped
    # sequence 1: log g = (0 + log 0.5)/2, g = 0.71 in [0.5, 2]: kept
    w, mask, flagged = rollout_correction("mask", OLD, MU, MASK, threshold=2.0)
    assert torch.equal(w, torch.ones_like(w))
    assert mask.tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    assert flagged.tolist() == [[True, True, True], [False, False, False]]
    assert math.isclose(math.exp(math.log(12) / 3), 2.289, rel_tol=1e-3)


def test_none_is_the_identity_and_threshold_must_exceed_one():
    w, mask, flagged = rollout_correction("none", OLD, MU, MASK)
    assert torch.equal(w, torch.ones_like(w)) and torch.equal(mask, MASK) and not flagged.any()
    with pytest.raises(ValueError, match="> 1"):
        rollout_correction("tis", OLD, MU, MASK, threshold=1.0)
    with pytest.raises(ValueError, match="known: mask, none, tis"):
        rollout_correction("is", OLD, MU, MASK)


def test_mismatch_sums():
    m = rollout_mismatch(OLD, MU, MASK)
    log_r = (OLD - MU) * MASK
    assert math.isclose(float(m["abs_diff"]), float(log_r.abs().sum()), rel_tol=1e-6)
    r = torch.exp(OLD - MU)
    k3 = ((r - torch.log(r) - 1) * MASK).sum()
    assert math.isclose(float(m["kl"]), float(k3), rel_tol=1e-6) and float(m["kl"]) > 0
    assert float(rollout_mismatch(OLD, OLD, MASK)["kl"]) == 0.0


def test_token_weights_multiply_the_per_token_loss():
    logp = torch.log(torch.tensor([[0.3, 0.6]]))
    old = torch.log(torch.tensor([[0.3, 0.5]]))
    adv, mask = torch.tensor([1.0]), torch.ones(1, 2)
    w = torch.tensor([[2.0, 0.5]])
    loss, _ = policy_loss("ppo_clip", logp, old, adv, mask, token_weights=w)
    # ρ = 1 and 1.2 (in the band): per token −ρA, weighted, token-mean
    assert math.isclose(float(loss), -(2.0 * 1.0 + 0.5 * 1.2) / 2, rel_tol=1e-5)


def test_clip_fractions_split_low_and_high():
    logp = torch.log(torch.tensor([[0.5, 0.9, 0.1, 0.5]]))
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    # ratios 1, 1.8, 0.2, 1; A > 0 clips the high one, A < 0 the low one
    _, pos = policy_loss("ppo_clip", logp, old, torch.tensor([1.0]), torch.ones(1, 4))
    _, neg = policy_loss("ppo_clip", logp, old, torch.tensor([-1.0]), torch.ones(1, 4))
    assert float(pos["clip_frac_high"]) == 0.25 and float(pos["clip_frac_low"]) == 0.0
    assert float(neg["clip_frac_low"]) == 0.25 and float(neg["clip_frac_high"]) == 0.0
    assert math.isclose(float(pos["ratio_min"]), 0.2, rel_tol=1e-5) and math.isclose(float(pos["ratio_max"]), 1.8, rel_tol=1e-5)
    assert math.isclose(float(pos["ratio_dev"]), 0.8, rel_tol=1e-5)  # max |ρ − 1|
    _, masked = policy_loss("ppo_clip", logp, old, torch.tensor([1.0]), torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    assert float(masked["ratio_min"]) == float(masked["ratio_max"]) == 1.0 and float(masked["ratio_dev"]) == 0.0  # masked tokens: none


def test_tis_caps_the_ratio_from_above_only():
    """A surviving mutant clamped it to [1/C, C] too: the earlier test's smallest ratio sat on 1/C."""
    w, _, _ = rollout_correction("tis", torch.log(torch.tensor([[0.1]])), torch.log(torch.tensor([[0.4]])), torch.ones(1, 1))
    assert float(w) == pytest.approx(0.25)  # min(0.1 / 0.4, 2)


def test_mask_drops_a_sequence_below_one_over_c_as_well_as_above_c():
    _, mask, flagged = rollout_correction("mask", torch.log(torch.tensor([[0.1]])), torch.log(torch.tensor([[0.4]])), torch.ones(1, 1))
    assert mask.tolist() == [[0.0]] and flagged.tolist() == [[True]]  # g = 0.25 < 1/2


# ---- found surviving mutants (2026-12-07) -------------------------------------------------------------


def planned(n_prompt: int, n_resp: int, mask=None) -> Trajectory:
    return Trajectory(list(range(n_prompt)), list(range(n_resp)), [-1.0] * n_resp, loss_mask=mask)


def test_every_trajectory_is_planned_exactly_once_when_mini_batches_do_not_divide():
    """A mutant of plan.py:30 `i * len(order) // m` -> `i * (len(order) // m)`: 10 trajectories in 3 mini-batches
    drop the 10th (never trained)."""
    trajectories = [planned(2, n) for n in range(1, 11)]
    plans = plan_mini_batches(trajectories, 3, 2, 4, seed=0)
    seen = [id(t) for rank in plans for mb in rank for micro in mb.micro_batches for t in micro]
    assert sorted(seen) == sorted(id(t) for t in trajectories)


def test_ranks_get_equally_many_micro_batches_when_a_later_rank_needs_more():
    """A mutant of plan.py:35 `max(len(s) for s in shards)` -> `len(shards[0])`: with a memory-style cut, rank 1
    (the longer sequence of each interleaved pair) needs 2 micro-batches and rank 0 one; rank 0 must be
    padded to 2 (ZeRO-3 gathers in lockstep) instead of the ranks running 1 and 2 forwards."""

    def cut_by_tokens(shard, budget=11):  # what ActivationBudget does, counted in response tokens
        out, cur = [], []
        for t in shard:
            if cur and sum(len(x.response_ids) for x in cur) + len(t.response_ids) > budget:
                out.append(cur)
                cur = []
            cur.append(t)
        return out + [cur] if cur else out

    trajectories = [planned(2, n) for n in (1, 2, 10, 11)]  # sorted: rank 0 gets 1,10 (11 tokens), rank 1 gets 2,11 (13)
    plans = plan_mini_batches(trajectories, 1, 2, cut_by_tokens, seed=0)
    assert [len(p[0].micro_batches) for p in plans] == [2, 2]
    assert plans[0][0].micro_batches[1] == []


def test_sequences_count_only_those_with_a_token_to_train_on():
    """A mutant of plan.py:37 `sum(t.num_tokens > 0 for t in part)` -> `len(part)`: a fully masked response
    (num_tokens 0) dilutes every per-sequence mean of the mini-batch."""
    trajectories = [planned(2, 3), planned(2, 4), planned(2, 5, mask=[0.0] * 5), planned(2, 0)]
    ((mini,),) = plan_mini_batches(trajectories, 1, 1, 8, seed=0)
    assert (mini.tokens, mini.sequences) == (7, 2)


def test_no_empty_optimizer_step_when_there_are_fewer_trajectories_than_mini_batches():
    """A mutant of plan.py:29 `max(1, min(mini_batches, len(order)))` -> `max(1, mini_batches)`: 2 trajectories and
    4 mini-batches gave 4 optimizer steps, 2 of them on no data (AdamW still moves the weights)."""
    plans = plan_mini_batches([planned(2, 3), planned(2, 4)], 4, 1, 8, seed=0)
    assert len(plans[0]) == 2 and all(any(mb.micro_batches) for mb in plans[0])
