"""Component tests of the rollout engines and the DeepSpeed learner, on the tiny random model."""

import math
import tempfile
from dataclasses import replace
from pathlib import Path

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
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.rollout.engines import SamplingConfig
from rlvr.rollout.pool import RolloutPool
from rlvr.runtime import sizing
from rlvr.types import GenerationRequest, Trajectory
from rlvr.weight_sync.ray_objects import fetch_buckets, put_bucket

# The last prompt is long enough (~940 tokens) for vLLM to cache its prefix blocks: after a weight
# update those must not be reused.
FEWSHOT = " ".join(f"Example {i}: {i} + {i} = {2 * i}." for i in range(60))
PROMPTS = [
    "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n",
    "State the final answer: 9 - 2 =",
    f"<|im_start|>system\n{FEWSHOT}<|im_end|>\n<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n",
]


def hf_logprobs(model, prompt_ids, response_ids, temperature):
    ids = torch.cat([prompt_ids, response_ids])[None]
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, response_ids[:, None]).squeeze(-1)


def perturbed_state(model_path, seed=1):
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_engine_samples_and_weight_update(backend, ray_session, tiny_model):
    engine = kept_engine(tiny_engine_config(tiny_model, f"rollout={backend}", max_model_len=1024))
    pool = RolloutPool([engine])
    sampling = SamplingConfig(temperature=0.8, top_p=1.0, max_tokens=12)
    reqs = [GenerationRequest(i, p, 3) for i, p in enumerate(PROMPTS)]
    samples = pool.generate(reqs, sampling, seed=0)
    assert [s.prompt_index for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for s in samples:
        assert len(s.logprobs) == len(s.response_ids) > 0
        assert s.finish_reason in ("stop", "length") and s.truncated == (s.finish_reason == "length")
        assert s.weight_version == 0
        assert all(lp <= 0 for lp in s.logprobs)
    if backend == "vllm":  # the cache rlvr.runtime.sizing worked out is the one vLLM allocated
        cfg = tiny_engine_config(tiny_model, max_model_len=1024)
        blocks = ray.get(engine.__ray_call__.remote(lambda self: self.engine.llm.llm_engine.vllm_config.cache_config.num_gpu_blocks))
        per_token = sizing.kv_bytes_per_token(sizing.ModelShape.of(tiny_model), cfg.dtype)
        assert blocks == int(cfg.kv_cache_gb * 2**30) // (per_token * cfg.block_size)
        # vLLM's rendezvous file is in the engine's own temp dir (which the next engine removes once this one is gone), not /tmp
        own = Path(ray.get(engine.__ray_call__.remote(lambda self: tempfile.gettempdir())))
        assert own.name.startswith("rlvr-vllm-") and list(own.glob("vllm_dist_*")), own
    # Same seed, same samples: what exact resume relies on.
    again = pool.generate(reqs, sampling, seed=0)
    assert [s.response_ids.tolist() for s in again] == [s.response_ids.tolist() for s in samples]

    # New weights: the engine's log-probs must be those of the new model, not the old one.
    model = perturbed_state(tiny_model)
    refs = [put_bucket([(n, p.detach()) for n, p in model.named_parameters()])]
    load = ray.get(engine.update_weights.remote(7, refs))
    assert load["load_s"] >= 0 and load["rss_mb"] > 100 and load["peak_rss_mb"] > 100  # the engine's own process: a model and its runtime
    after = pool.generate(reqs, sampling, seed=1)
    assert all(s.weight_version == 7 for s in after)
    for s in after[::3]:  # one sample per prompt, the long cached-prefix one included
        expected = hf_logprobs(model, s.prompt_ids, s.response_ids, sampling.temperature)
        torch.testing.assert_close(s.logprobs, expected, atol=2e-3, rtol=0)


@pytest.mark.slow
def test_vllm_honours_a_request_s_own_cap_and_keeps_the_stop_string_it_met(ray_session, tiny_model):
    """What a multi-turn episode relies on (the HF engine's twins are in tests/unit/test_hf_engine.py):
    a request's own max_tokens (what is left of the episode) caps its response, and a stop string
    ends the response at the token that completes it, kept in the text and the tokens, as "stop"."""
    pool = RolloutPool([kept_engine(tiny_engine_config(tiny_model, max_model_len=1024))])
    greedy = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16)
    request = [GenerationRequest(0, PROMPTS[1], 1)]
    free = pool.generate(request, greedy, seed=0)[0]
    assert len(free.response_ids) == 16 and free.finish_reason == "length"

    capped = pool.generate([GenerationRequest(0, PROMPTS[1], 1, max_tokens=3)], greedy, seed=0)[0]
    assert capped.response_ids.tolist() == free.response_ids[:3].tolist() and capped.finish_reason == "length" and capped.truncated

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    pieces = [tokenizer.decode([t]) for t in free.response_ids.tolist()]
    # a token whose text first appears at position j: a stop string met by token j and no earlier
    j = next(i for i, p in enumerate(pieces) if i >= 3 and len(p) >= 2 and p.isascii() and p.isprintable() and p not in "".join(pieces[:i]))
    stopped = pool.generate(request, replace(greedy, stop=(pieces[j],)), seed=0)[0]
    assert stopped.response_ids.tolist() == free.response_ids[: j + 1].tolist()
    assert stopped.finish_reason == "stop" and not stopped.truncated
    assert stopped.text.endswith(pieces[j]) and stopped.text == free.text[: len(stopped.text)]
    assert len(stopped.logprobs) == j + 1


@pytest.mark.slow
def test_learner_step_changes_weights_and_exports_them(ray_session, tiny_model):
    learner = kept_learner(tiny_learner_config(tiny_model, lr=1e-2, threads=1))
    refs_before, nbytes = ray.get(learner.export_weights.remote(bucket_mb=1))
    assert len(refs_before) > 1  # several ~1 MB buckets, not one tensor at a time nor one blob
    before = dict(fetch_buckets(refs_before))
    disk = dict(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).named_parameters())
    assert before.keys() == disk.keys()
    assert nbytes == sum(t.numel() * t.element_size() for t in before.values())
    for name, t in before.items():
        torch.testing.assert_close(t, disk[name].detach())

    seqs = [
        Trajectory(prompt_ids=[5, 6, 7], response_ids=[8, 9], advantage=1.0),
        Trajectory(prompt_ids=[5, 6], response_ids=[10, 11, 12], advantage=-1.0),
        Trajectory(prompt_ids=[7], response_ids=[13], advantage=0.5),
    ]
    metrics = ray.get(learner.train_step.remote([mini_batch(seqs[:2], seqs[2:])], tiny_update_config("algorithm=grpo")))
    assert metrics["grad_norm"] > 0 and metrics["tokens"] == 6 and metrics["lr"] == 1e-2
    assert abs(metrics["ratio_mean"] - 1.0) < 1e-6  # on-policy: π_old is the pre-step policy
    refs_after, _ = ray.get(learner.export_weights.remote())
    after = dict(fetch_buckets(refs_after))
    changed = sum(not torch.equal(after[n], before[n]) for n in before)
    assert changed == len(before)


@pytest.mark.slow
def test_bf16_autocast_learner_keeps_fp32_weights_and_near_fp32_logprobs(ray_session, tiny_model):
    """model.train_dtype=bfloat16 over float32 weights: the forward runs in bf16 (log-probs move by
    bf16 rounding, not more), the weights, gradients and Adam state stay float32."""
    seqs = [Trajectory([5, 6, 7], [8, 9, 10, 11], advantage=1.0), Trajectory([5, 6], [10, 11, 12], advantage=-1.0)]
    learners = {dtype: kept_learner(tiny_learner_config(tiny_model, lr=1e-3, threads=1, train_dtype=dtype), index)
                for index, dtype in enumerate(("float32", "bfloat16"))}
    lp = {d: torch.tensor(sum(ray.get(l.logprobs.remote(seqs, 1.0)), [])) for d, l in learners.items()}
    gap = float((lp["bfloat16"] - lp["float32"]).abs().max())
    assert 0 < gap < 0.1, gap  # bf16 has an 8-bit mantissa: the forward differs, by rounding only
    metrics = ray.get(learners["bfloat16"].train_step.remote([mini_batch(seqs)], tiny_update_config("algorithm=grpo")))
    assert metrics["grad_norm"] > 0
    refs, _ = ray.get(learners["bfloat16"].export_weights.remote())
    assert all(t.dtype == torch.float32 for _, t in fetch_buckets(refs))
    optim_dtypes = ray.get(learners["bfloat16"].__ray_call__.remote(lambda self: {v.dtype for s in self.engine.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()}))
    assert optim_dtypes == {torch.float32}


@pytest.mark.slow
def test_pool_keeps_request_order_and_gives_each_engine_its_own_seed(ray_session, tiny_model):
    from rlvr.rollout.pool import RolloutEngine

    engines = [RolloutEngine.options(num_cpus=0.1).remote(tiny_engine_config(tiny_model, "rollout=hf")) for _ in range(2)]
    try:
        pool = RolloutPool(engines)
        # shards [0, 2] and [1]: the same prompt on both engines, first in each shard
        reqs = [GenerationRequest(i, "What is 2 + 3?", 1) for i in range(3)]
        samples = pool.generate(reqs, SamplingConfig(1.0, 1.0, 12), seed=4)
        assert [s.prompt_index for s in samples] == [0, 1, 2]
        # engine 0's and engine 1's first draws of one prompt are not the same draw
        assert samples[0].response_ids.tolist() != samples[1].response_ids.tolist()
    finally:
        for e in engines:
            ray.kill(e)


@pytest.mark.slow
def test_the_lr_schedule_moves_with_each_optimizer_step_and_a_checkpoint_keeps_its_place(ray_session, tiny_model, tmp_path):
    """Warm-up of 2 then cosine to 0.1 over 4 steps: the lr each step trained with is 0, ½, 1 and
    0.55 of learner.lr; the first (lr 0) moves no weight; a learner loading the checkpoint after
    step 2 takes step 3 at the same lr as the one that went on."""
    cfg = tiny_learner_config(tiny_model, "learner.lr_warmup_steps=2", "learner.lr_schedule=cosine", "learner.min_lr_ratio=0.1",
                              lr=1e-2, threads=1, total_optimizer_steps=4)
    seqs = [Trajectory([5, 6, 7], [8, 9, 10], advantage=1.0), Trajectory([5, 6], [10, 11, 12], advantage=-1.0)]
    update = tiny_update_config("algorithm=grpo")
    learner = kept_learner(cfg)
    before = dict(fetch_buckets(ray.get(learner.export_weights.remote())[0]))
    lrs = [ray.get(learner.train_step.remote([mini_batch(seqs)], update))["lr"]]
    after = dict(fetch_buckets(ray.get(learner.export_weights.remote())[0]))
    assert lrs == [0.0] and all(torch.equal(after[n], before[n]) for n in before)
    lrs.append(ray.get(learner.train_step.remote([mini_batch(seqs)], update))["lr"])
    ray.get(learner.save_checkpoint.remote(str(tmp_path), "policy"))
    lrs += [ray.get(learner.train_step.remote([mini_batch(seqs)], update))["lr"] for _ in range(2)]
    assert lrs == pytest.approx([0.0, 5e-3, 1e-2, 1e-2 * (0.1 + 0.9 * 0.5)])
    resumed = kept_learner(cfg, 1)
    ray.get(resumed.load_checkpoint.remote(str(tmp_path), "policy"))
    assert ray.get(resumed.train_step.remote([mini_batch(seqs)], update))["lr"] == pytest.approx(1e-2)


@pytest.mark.slow
def test_a_resume_trains_at_the_lr_its_own_config_gives_at_the_steps_taken(ray_session, tiny_model, tmp_path):
    """DeepSpeed's loaded param groups kept the checkpoint's lr: a resume with learner.lr raised trained at
    the old one, a schedule turned off stayed at the warm-up's lr, one turned on failed to load the
    checkpoint's missing scheduler state, and a raised trainer.steps (the schedule's T) took effect a step late."""
    seqs = [Trajectory([5, 6, 7], [8, 9, 10], advantage=1.0), Trajectory([5, 6], [10, 11, 12], advantage=-1.0)]
    update = tiny_update_config("algorithm=grpo")

    def trained_lrs(learner, steps: int) -> list[float]:
        return [ray.get(learner.train_step.remote([mini_batch(seqs)], update))["lr"] for _ in range(steps)]

    constant = kept_learner(tiny_learner_config(tiny_model, lr=1e-2, threads=1, total_optimizer_steps=4))
    assert trained_lrs(constant, 2) == [1e-2, 1e-2]
    ray.get(constant.save_checkpoint.remote(str(tmp_path / "constant"), "policy"))
    cosine = kept_learner(tiny_learner_config(tiny_model, "learner.lr_schedule=cosine", lr=2e-2, threads=1, total_optimizer_steps=8), 1)
    ray.get(cosine.load_checkpoint.remote(str(tmp_path / "constant"), "policy"))
    assert trained_lrs(cosine, 2) == pytest.approx([2e-2 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in (2, 3)])
    ray.get(cosine.save_checkpoint.remote(str(tmp_path / "cosine"), "policy"))
    ray.get(constant.load_checkpoint.remote(str(tmp_path / "cosine"), "policy"))  # the schedule turned off again
    assert trained_lrs(constant, 1) == [1e-2]
