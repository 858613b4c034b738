"""rlvr.sizing: the engine's KV cache and the learner's micro-batch worked out from the model's
shapes and the job (`auto`), against their formulas. That a real engine starts with the cache it
was given and holds it is checked in tests/integration/test_roles.py."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlvr import sizing
from rlvr.config import ConfigError, compose, validate
from rlvr.sizing import ModelShape

# SmolLM2-135M's shapes (its config.json)
SMOLLM2 = ModelShape(layers=30, hidden=576, intermediate=1536, kv_heads=3, head_dim=64, vocab=49152)


def test_kv_bytes_per_token_is_k_and_v_of_every_layer():
    assert sizing.kv_bytes_per_token(SMOLLM2, "float32") == 2 * 30 * 3 * 64 * 4 == 46080
    assert sizing.kv_bytes_per_token(SMOLLM2, "bfloat16") == 23040


def test_kv_cache_holds_whole_blocks_and_at_least_one_longest_sequence():
    # 32 sequences of 155 tokens in 32-token blocks: 5 blocks each
    assert sizing.kv_cache_bytes(10, 32, 155, 1024, block_tokens=32) == 32 * 5 * 32 * 10
    # in vLLM's CPU default 128-token blocks the same sequences take 256 tokens each
    assert sizing.kv_cache_bytes(10, 32, 155, 1024) == 32 * 256 * 10
    # one short sequence still gets room for one max_model_len sequence (vLLM refuses less)
    assert sizing.kv_cache_bytes(10, 1, 20, 1024, block_tokens=32) == 1024 * 10


def _need(m, prompt, response, n, shared, per, per_resp):
    prompts = (math.ceil(m / n) + 1) * prompt if shared else m * prompt
    return (prompts + m * response) * per + m * response * per_resp


@given(budget=st.floats(1e6, 1e10), prompt=st.integers(1, 500), response=st.integers(1, 1000), n=st.integers(2, 16),
       shared=st.booleans())
def test_micro_batch_is_the_largest_that_fits_the_budget(budget, prompt, response, n, shared):
    per, per_resp = sizing.activation_bytes_per_position(SMOLLM2, "bfloat16")
    m = sizing.micro_batch_for_budget(budget, prompt, response, n, shared, per, per_resp, cap=64)
    assert 1 <= m <= 64
    if m > 1 or _need(1, prompt, response, n, shared, per, per_resp) <= budget:
        assert _need(m, prompt, response, n, shared, per, per_resp) <= budget
    if m < 64:
        assert _need(m + 1, prompt, response, n, shared, per, per_resp) > budget
    # more memory never buys a smaller micro-batch
    assert sizing.micro_batch_for_budget(budget * 2, prompt, response, n, shared, per, per_resp) >= m


def test_activation_estimate_per_position():
    per, per_resp = sizing.activation_bytes_per_position(SMOLLM2, "bfloat16")
    assert per == 30 * (16 * 576 + 2 * (7 * 576 + 4 * 1536))  # 0.89 MB a position
    assert per_resp == 16 * 49152
    # float32 activations hold more; checkpointing keeps only each layer's input and one layer
    assert sizing.activation_bytes_per_position(SMOLLM2, "float32")[0] > per
    ckpt, _ = sizing.activation_bytes_per_position(SMOLLM2, "bfloat16", checkpointing=True)
    assert ckpt == 30 * 4 * 576 + per / 30


def test_largest_generate_call_per_job():
    assert sizing.largest_generate_call(compose([])) == 256  # the held-out evaluation: 256 prompts x 1
    no_eval = ["trainer.eval_every=0", "eval.at_start=false"]
    assert sizing.largest_generate_call(compose(["algorithm=grpo", *no_eval])) == 8 * 4
    assert sizing.largest_generate_call(compose(["algorithm=v05", "algorithm.warmup_prompts=0", *no_eval])) == 8 * 16  # n_max
    assert sizing.largest_generate_call(compose(["algorithm=grpo", "eval.oracle.samples=32", *no_eval])) == 8 * 32


def test_auto_sizes_from_the_model_and_the_data(tiny_model):
    cfg = compose(["model=tiny-random", "algorithm=grpo", "trainer.eval_every=0", "eval.at_start=false"])
    prompt = sizing.longest_prompt_tokens(cfg, tiny_model)
    assert prompt > 20  # chat template, system prompt and one-shot example
    shape = ModelShape.of(tiny_model)
    tokens = prompt + cfg.rollout.max_tokens
    expected = 32 * math.ceil(tokens / cfg.rollout.block_size) * cfg.rollout.block_size * sizing.kv_bytes_per_token(shape, "float32")
    assert sizing.kv_cache_gb(cfg, tiny_model) == pytest.approx(max(expected, 512 * sizing.kv_bytes_per_token(shape, "float32")) / 2**30)
    assert sizing.kv_cache_gb(compose(["model=tiny-random", "rollout.kv_cache_gb=0.5"]), tiny_model) == 0.5
    assert sizing.micro_batch_size(compose(["model=tiny-random", "learner.micro_batch_size=3"]), tiny_model) == 3
    small = sizing.micro_batch_size(compose(["model=tiny-random", "learner.activation_memory_gb=0.001"]), tiny_model)
    assert 1 <= small < sizing.micro_batch_size(cfg, tiny_model)


@pytest.mark.parametrize("override", ["learner.micro_batch_size=0", "learner.micro_batch_size=big", "rollout.kv_cache_gb=-1",
                                      "learner.activation_memory_gb=0", "rollout.block_size=0"])
def test_bad_sizes_are_refused_naming_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        validate(compose([override]))
