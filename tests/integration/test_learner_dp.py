"""Data-parallel learners: 2 DeepSpeed ranks over gloo give the same update as 1 rank.

One step with 2 ranks x micro-batch m must produce the weights of 1 rank with micro-batch 2m, for
ZeRO 1, 2 and 3 (to float tolerance: only the order of the gradient sums differs). Gradient
accumulation (micro_batch_size) and gradient checkpointing must not change the update either.
"""

import pytest
import ray
from helpers import adapter_weights, tiny_learner_config, tiny_update_config

from rlvr.learner.actor import PolicyLearner
from rlvr.runtime.placement import node_address
from rlvr.types import MiniBatch, Trajectory
from rlvr.weight_sync.ray_objects import fetch_buckets

SEQS = [
    Trajectory([5, 6, 7], [8, 9], advantage=1.0),
    Trajectory([5, 6], [10, 11, 12], advantage=-1.0),
    Trajectory([7], [13], advantage=0.5),
    Trajectory([9, 9, 4], [3, 4, 5, 6], advantage=-0.3),
]
TOKENS, SEQUENCES = sum(len(s.response_ids) for s in SEQS), len(SEQS)
LR = 1e-3


@pytest.fixture(scope="module")
def learner_group(ray_session, tiny_model):
    """learner_group(world): a group of `world` learner ranks, made once per module; each use resets
    it to its settings (`PolicyLearner.reset`, as a kept role is), instead of starting new ranks."""
    made: dict[int, list] = {}

    def group(world: int) -> list:
        if world not in made:
            host, port = ray.get(node_address.remote())
            cfg = tiny_learner_config(tiny_model, threads=1)
            made[world] = [PolicyLearner.options(num_cpus=0.1).remote(cfg, r, world, host, port) for r in range(world)]
        return made[world]

    yield group
    for learners in made.values():
        for learner in learners:
            ray.kill(learner)


def trained_weights(learner_group, tiny_model, micro_batches_per_rank, zero_stage, adapters=False, metrics=None, **cfg_kwargs):
    """Run one step with len(micro_batches_per_rank) ranks, from the initial weights; return rank 0's
    exported weights (or, with `adapters`, its LoRA adapter weights); `metrics` (a list) gets rank 0's."""
    learners = learner_group(len(micro_batches_per_rank))
    cfg = tiny_learner_config(tiny_model, lr=LR, threads=1, zero_stage=zero_stage, **cfg_kwargs)
    ray.get([l.reset.remote(cfg, None) for l in learners])
    update = tiny_update_config("algorithm=grpo")
    logged = ray.get([l.train_step.remote([MiniBatch(mbs, TOKENS, SEQUENCES)], update) for l, mbs in zip(learners, micro_batches_per_rank)])
    if metrics is not None:
        metrics.append(logged[0])
    if adapters:
        return ray.get([l.__ray_call__.remote(adapter_weights) for l in learners])[0]  # every rank joins the gather
    refs, _ = ray.get([l.export_weights.remote() for l in learners])[0]
    return dict(fetch_buckets(refs))


def max_diff(a, b):
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_two_ranks_match_one_rank_with_twice_the_micro_batch(zero_stage, learner_group, tiny_model):
    """And so do the logged loss and gradient norm: rank 0 logged its own share of the loss times
    the world size (-0.75 for -0.05), and under ZeRO-0 its own gradient's norm (16.7 for 9.6); and
    the token statistics, which were rank 0's tokens only (tokens 3 of 19)."""
    metrics = []
    one = trained_weights(learner_group, tiny_model, [[SEQS]], zero_stage, metrics=metrics)
    two = trained_weights(learner_group, tiny_model, [[SEQS[0::2]], [SEQS[1::2]]], zero_stage, metrics=metrics)
    for key in ("pg_loss", "loss", "grad_norm", "entropy", "approx_kl", "clip_frac", "ratio_min", "ratio_max"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-5, abs=1e-7), key
    assert metrics[1]["tokens"] == metrics[0]["tokens"] == sum(len(s.response_ids) for s in SEQS)
    from transformers import AutoModelForCausalLM

    init = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(tiny_model).named_parameters()}
    moved = max_diff(one, init)
    assert moved > 0.5 * LR  # the step moved the weights by about lr (Adam's first step)
    assert max_diff(one, two) < 1e-2 * LR, f"2 ranks differ from 1 rank by {max_diff(one, two):.2e} (step {moved:.2e})"


@pytest.mark.slow
def test_the_optimizer_is_torch_s_fused_adamw(learner_group, tiny_model):
    """The CPU default is a per-tensor loop, 8x slower on smollm2-135m (docs/benchmarks.md)."""
    learner = learner_group(1)[0]
    ray.get(learner.reset.remote(tiny_learner_config(tiny_model, lr=LR, threads=1, zero_stage=0), None))
    kind = ray.get(learner.__ray_call__.remote(lambda self: (type(self.engine.optimizer).__name__, self.engine.optimizer.defaults.get("fused"))))
    assert kind == ("AdamW", True)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage, checkpointing", [(2, True), (3, False)])
def test_accumulation_and_checkpointing_do_not_change_the_update(zero_stage, checkpointing, learner_group, tiny_model):
    """Under ZeRO-3 each micro-batch's gradient replaced the one before (the forward bypasses
    engine.forward, where DeepSpeed counts micro-steps), so the update was the last micro-batch's."""
    whole = trained_weights(learner_group, tiny_model, [[SEQS]], zero_stage)
    # four micro-batches of one sequence, accumulated (with activations recomputed in backward)
    accumulated = trained_weights(learner_group, tiny_model, [[[s] for s in SEQS]], zero_stage, gradient_checkpointing=checkpointing)
    # Adam's first step is about lr·sign(g): the last micro-batch's gradient alone moved weights by
    # 2·lr; ZeRO-3's partitioned sums in another order move near-zero gradients' signs by 1.4 % of lr
    assert max_diff(whole, accumulated) < 5e-2 * LR


@pytest.mark.slow
@pytest.mark.parametrize("pack_responses", [True, False])
def test_zero3_ranks_stay_in_lockstep_whatever_their_micro_batches_hold(pack_responses, learner_group, tiny_model):
    """ZeRO-3 gathers a module's parameters in a collective at every call, so every rank must make
    the same calls whatever its data. Rank 1 holds one single-token response (nothing to feed after
    the prompt) and a stand-in for an empty micro-batch; LM-head chunks of 2 would split rank 0's 2
    and 7 positions unlike rank 1's 1. These crashed both ranks (gloo: collective mismatch)."""
    kwargs = {"head_chunk": 2, "pack_responses": pack_responses}
    one = trained_weights(learner_group, tiny_model, [[SEQS]], 3, **kwargs)
    two = trained_weights(learner_group, tiny_model, [[[SEQS[0]], [SEQS[1], SEQS[3]]], [[SEQS[2]], []]], 3, **kwargs)
    assert max_diff(one, two) < 1e-2 * LR, f"2 ranks differ from 1 rank by {max_diff(one, two):.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_lora_two_ranks_match_one_rank(zero_stage, learner_group, tiny_model):
    from rlvr.lora import LoraSettings

    lora = LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules="all-linear")
    one = trained_weights(learner_group, tiny_model, [[SEQS]], zero_stage, adapters=True, lora=lora)
    two = trained_weights(learner_group, tiny_model, [[SEQS[0::2]], [SEQS[1::2]]], zero_stage, adapters=True, lora=lora)
    assert one.keys() == two.keys() and any(".lora_B." in n for n in one)
    moved = max(float(t.abs().max()) for n, t in one.items() if ".lora_B." in n)  # B starts at 0
    assert moved > 0.5 * LR
    assert max_diff(one, two) < 1e-2 * LR, f"2 ranks differ from 1 rank by {max_diff(one, two):.2e} (step {moved:.2e})"


@pytest.mark.parametrize(
    "agg, expected",
    [
        # ratio 1 on the first pass, so the PPO loss per token is −A: the aggregates of −A over SEQS
        ("seq-mean-token-mean", -(1.0 - 1.0 + 0.5 - 0.3) / 4),
        ("token-mean", -(1.0 * 2 - 1.0 * 3 + 0.5 * 1 - 0.3 * 4) / TOKENS),
    ],
)
def test_logged_loss_is_the_batch_loss_however_it_is_split(agg, expected, learner_group, tiny_model):
    (learner,) = learner_group(1)
    ray.get(learner.reset.remote(tiny_learner_config(tiny_model, lr=LR, threads=1, zero_stage=1), None))
    update = tiny_update_config("algorithm=grpo", agg=agg)
    for micro_batches in ([SEQS], [[s] for s in SEQS], [SEQS[:1], SEQS[1:]]):
        m = ray.get(learner.train_step.remote([MiniBatch(micro_batches, TOKENS, SEQUENCES)], update))
        assert m["pg_loss"] == pytest.approx(expected, abs=1e-6), micro_batches
        assert m["loss"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_a_sequence_weighs_the_same_in_any_micro_batch(agg, learner_group, tiny_model):
    """The `mask` correction drops a sequence whose engine log-probs are far from π_old, and one
    sequence has no token to train on. The update must not depend on how the mini-batch is cut
    into micro-batches; before, each micro-batch divided by its own survivors, so a sequence next
    to a dropped one weighed up to twice as much."""
    from dataclasses import replace

    from helpers import mini_batch

    (learner,) = learner_group(1)
    cfg = tiny_learner_config(tiny_model, lr=LR, threads=1, zero_stage=1)
    update = tiny_update_config("algorithm=grpo", agg=agg, rollout_correction="mask", correction_threshold=2.0)
    seqs = [*SEQS, Trajectory([7, 8], [13, 14], loss_mask=[0.0, 0.0], advantage=0.7)]
    ray.get(learner.reset.remote(cfg, None))
    pi = ray.get(learner.logprobs.remote(seqs, update.temperature))
    # μ = π, but 5 nats lower on sequence 1: its geometric ratio e^5 leaves [1/2, 2] and it is dropped
    seqs = [replace(s, rollout_logprobs=[lp - (5.0 if i == 1 else 0.0) for lp in pi[i]]) for i, s in enumerate(seqs)]
    weights, losses = [], []
    for micro_batches in ([seqs], [[s] for s in seqs], [seqs[:2], seqs[2:]], [seqs[1:3], [seqs[0], *seqs[3:]]]):
        ray.get(learner.reset.remote(cfg, None))
        m = ray.get(learner.train_step.remote([mini_batch(*micro_batches)], update))
        assert m["rollout_corrected_frac"] > 0  # the drop happened
        refs, _ = ray.get(learner.export_weights.remote())
        weights.append(dict(fetch_buckets(refs)))
        losses.append(m["pg_loss"])
    for w, loss in zip(weights[1:], losses[1:]):
        assert loss == pytest.approx(losses[0], abs=1e-6)
        # Adam's first step is about lr·sign(g): sums in another order move near-zero gradients by ~1 % of lr
        assert max_diff(weights[0], w) < 5e-2 * LR, max_diff(weights[0], w)


@pytest.mark.slow
def test_gradient_cosines_are_the_batch_gradient_s_on_one_rank_or_two(learner_group, tiny_model):
    """The oracle's instrument (PolicyLearner.gradient_cosines): cos(g, g) = 1 and cos(−g, g) = −1,
    and two ranks' shares sum to one rank's gradient, so the cosine of two advantage sets is the same."""
    from dataclasses import replace

    update = tiny_update_config("algorithm=grpo")
    flipped = [replace(s, advantage=-s.advantage) for s in SEQS]
    other = [replace(s, advantage=a) for s, a in zip(SEQS, (0.3, 0.9, -0.4, 1.0))]
    cfg = tiny_learner_config(tiny_model, lr=LR, threads=1, zero_stage=1)
    (one,) = learner_group(1)
    ray.get(one.reset.remote(cfg, None))

    def plan(seqs, micro):  # the same sequences, in the same micro-batches, only the advantages differ
        return [MiniBatch([seqs[i : i + micro] for i in range(0, len(seqs), micro)], TOKENS, SEQUENCES)]

    same, opposite, between = ray.get(one.gradient_cosines.remote([plan(SEQS, 2), plan(flipped, 2), plan(other, 2), plan(SEQS, 2)], update))
    assert same == pytest.approx(1.0, abs=1e-6) and opposite == pytest.approx(-1.0, abs=1e-6) and -1 < between < 1
    ray.get(one.reset.remote(replace(cfg, head_chunk=1), None))  # the LM head a position at a time, recomputed per backward
    chunked = ray.get(one.gradient_cosines.remote([plan(SEQS, 2), plan(other, 2), plan(SEQS, 2)], update))
    assert chunked[0] == pytest.approx(1.0, abs=1e-6) and chunked[1] == pytest.approx(between, abs=1e-5)
    two = learner_group(2)
    ray.get([l.reset.remote(cfg, None) for l in two])
    halves = ray.get([l.gradient_cosines.remote([plan(part(other), 2), plan(part(SEQS), 2)], update)
                      for l, part in zip(two, (lambda s: s[0::2], lambda s: s[1::2]))])
    assert halves[0] == halves[1] and halves[0][0] == pytest.approx(between, abs=1e-5)
