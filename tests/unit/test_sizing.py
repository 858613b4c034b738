"""rlvr.runtime.sizing: the engine's KV cache and the learner's micro-batch worked out from the model's
shapes and the job (`auto`), against their formulas. That a real engine starts with the cache it
was given and holds it is checked in tests/integration/test_roles.py."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr.config import ConfigError, compose, validate
from rlvr.learner.forward import collate, positions
from rlvr.runtime import sizing
from rlvr.runtime.sizing import ModelShape
from rlvr.types import Trajectory

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


@settings(max_examples=40, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 30)), min_size=1, max_size=12), packed=st.booleans())
def test_the_budget_counts_the_positions_the_forward_runs(shapes, packed):
    """ActivationBudget counts, from the trajectories, what `rlvr.learner.forward` computes on once they are
    collated: decoder positions (padding included) and LM-head positions."""
    prompts = [[7] * (5 + 3 * k) for k in range(4)]  # four distinct prompts of 5-14 tokens
    seqs = [Trajectory(prompts[k], list(range(1, r + 1))) for k, r in shapes]
    mb = collate(seqs, 0, "cpu")
    decoder = sizing.ActivationBudget(0, 1, 0, shared_prompts=True, packed=packed, head_chunk=0)
    assert decoder.bytes(seqs) == positions(mb, packed)[0]
    head = sizing.ActivationBudget(0, 0, 1, shared_prompts=True, packed=packed, head_chunk=0)
    assert head.bytes(seqs) == (len(mb.real_rows) if packed else mb.response_ids.numel())
    unshared = sizing.ActivationBudget(0, 1, 0, shared_prompts=False, packed=False, head_chunk=0)
    assert unshared.bytes(seqs) == len(seqs) * (mb.prompt_ids.shape[1] + mb.response_ids.shape[1] - 1)


@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 60)), min_size=1, max_size=40), budget_mb=st.floats(50, 3000))
def test_the_budget_cuts_the_fewest_micro_batches_that_fit_as_evenly_as_it_can(shapes, budget_mb):
    per, per_resp = sizing.activation_bytes_per_position(SMOLLM2, "bfloat16")
    budget = sizing.ActivationBudget(budget_mb * 2**20, per, per_resp, shared_prompts=True, packed=True, head_chunk=0)
    prompts = [list(range(40 + 30 * k)) for k in range(4)]
    shard = sorted((Trajectory(prompts[k], [1] * r) for k, r in shapes), key=lambda t: (len(t.prompt_ids), len(t.response_ids)))
    micro = budget(shard)
    assert [t for mb in micro for t in mb] == shard  # in order, every sequence once
    assert all(budget.bytes(mb) <= budget.budget_bytes or len(mb) == 1 for mb in micro)
    # greedy at the full budget cuts the fewest; the even cut has as many, none costlier than greedy's costliest
    greedy, current = [], []
    for t in shard:
        if current and budget.bytes(current + [t]) > budget.budget_bytes:
            greedy.append(current)
            current = []
        current.append(t)
    greedy.append(current)
    assert len(micro) == len(greedy)
    assert max(budget.bytes(mb) for mb in micro) <= max(budget.bytes(mb) for mb in greedy)


def test_the_budget_fits_short_answers_many_to_a_micro_batch():
    per, per_resp = sizing.activation_bytes_per_position(SMOLLM2, "bfloat16")
    budget = sizing.ActivationBudget(1.5 * 2**30, per, per_resp, shared_prompts=True, packed=True, head_chunk=0)
    prompt = list(range(150))
    assert [len(mb) for mb in budget([Trajectory(prompt, [1] * 30)] * 16)] == [16]  # 0.9 GB
    assert [len(mb) for mb in budget([Trajectory(prompt, [1] * 30)] * 32)] == [16, 16]
    assert [len(mb) for mb in budget([Trajectory(prompt, [1] * 4000)] * 2)] == [1, 1]  # over the budget alone: cannot be split
    # the LM head a chunk at a time holds one chunk's logits, whatever the micro-batch's answers
    chunked = sizing.ActivationBudget(1.5 * 2**30, per, per_resp, shared_prompts=True, packed=True, head_chunk=128)
    assert chunked.bytes([Trajectory(prompt, [1] * 30)] * 16) == budget.bytes([Trajectory(prompt, [1] * 30)] * 16) - (480 - 128) * per_resp
    assert len(chunked([Trajectory(prompt, [1] * 30)] * 32)) == 1


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
    assert sizing.micro_batching(compose(["model=tiny-random", "learner.micro_batch_size=3"]), tiny_model) == 3
    budget = sizing.micro_batching(cfg, tiny_model)
    assert isinstance(budget, sizing.ActivationBudget)
    assert budget.budget_bytes == cfg.learner.activation_memory_gb * 2**30 and budget.shared_prompts and budget.packed
    assert (budget.per_position, budget.per_response_position) == sizing.activation_bytes_per_position(shape, "float32")
    ckpt = sizing.micro_batching(compose(["model=tiny-random", "learner.gradient_checkpointing=true"]), tiny_model)
    assert not ckpt.shared_prompts and not ckpt.packed  # HF turns the prompt cache off under checkpointing


@pytest.mark.parametrize("override", ["learner.micro_batch_size=0", "learner.micro_batch_size=big", "rollout.kv_cache_gb=-1",
                                      "learner.activation_memory_gb=0", "rollout.block_size=0",
                                      "learner.head_chunk=-1"])
def test_bad_sizes_are_refused_naming_the_key(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        validate(compose([override]))


def test_a_prompt_with_no_room_for_its_answer_is_a_data_error_naming_it(tiny_model):
    """vLLM refused a prompt past max_model_len mid-run, with a traceback naming no row; a prompt
    just short of it had its answers cut silently. Now the run stops before any role starts."""
    from rlvr.config import compose
    from rlvr.data import DataError, Problem
    from rlvr.runtime.sizing import check_prompt_lengths

    cfg = compose(["model=tiny-random", "rollout.max_tokens=64"])  # max_model_len 512
    short, long = Problem("t/short", "What is 2 + 2?", "4"), Problem("t/long", "one two three " * 200, "4")
    check_prompt_lengths(cfg, tiny_model, {"data.train": [short], "data.heldout": [short]})
    with pytest.raises(DataError, match=r"data\.train: 1 of 2 prompts render to more than 448 tokens .*rollout\.max_tokens=64.*t/long"):
        check_prompt_lengths(cfg, tiny_model, {"data.train": [short, long]})
    with pytest.raises(DataError, match=r"data\.heldout: .*eval\.max_tokens"):
        check_prompt_lengths(cfg, tiny_model, {"data.heldout": [long]})


def test_a_long_length_check_says_so_before_it_renders(monkeypatch, caplog):
    """Every prompt is rendered and tokenized one by one (about 0.15 ms each): 2.5 min for a million,
    with nothing on the console."""
    import logging

    import rlvr.generation
    from rlvr.data import Problem
    from rlvr.runtime.sizing import ANNOUNCED_CHECK, check_prompt_lengths

    told = []

    def render_after_the_line(cfg, model_path):
        def render(problem):
            told.append(f"{ANNOUNCED_CHECK} prompts, rendered, fits model.max_model_len" in caplog.text)
            return [0] * 8
        return render

    monkeypatch.setattr(rlvr.generation, "first_prompt_ids", render_after_the_line)
    with caplog.at_level(logging.INFO, logger="rlvr"):
        check_prompt_lengths(compose(["model=tiny-random"]), "unused", {"data.train": [Problem(f"t/{i}", "q", "1") for i in range(ANNOUNCED_CHECK)]})
    assert len(told) == ANNOUNCED_CHECK and told[0]


def test_an_episode_s_first_prompt_is_what_the_checks_and_the_cache_read(tiny_model):
    """Episode runs skipped the length check (a prompt too long was found when first sampled, steps
    into the run) and sized the KV cache from the data's prompt, without the environment's system
    prompt, few-shot turns and tool block."""
    from rlvr.data import DataError, Problem
    from rlvr.generation import first_prompt_ids
    from rlvr.runtime.sizing import check_prompt_lengths

    plain = compose(["model=tiny-random", "algorithm=grpo"])
    episodes = compose(["model=tiny-random", "algorithm=grpo", "env=calculator"])
    question = Problem("t/q", "What is 2 + 2?", "4")
    assert len(first_prompt_ids(episodes, tiny_model)(question)) > len(first_prompt_ids(plain, tiny_model)(question)) + 100
    assert sizing.longest_prompt_tokens(episodes, tiny_model) > sizing.longest_prompt_tokens(plain, tiny_model) + 100
    room = len(first_prompt_ids(episodes, tiny_model)(question))
    check_prompt_lengths(compose(["model=tiny-random", "env=calculator", f"model.max_model_len={room + 1}"]), tiny_model, {"data.train": [question]})
    with pytest.raises(DataError, match=r"data\.train: 1 of 1 prompts .*less 1 token to answer in; env=calculator.*t/q"):
        check_prompt_lengths(compose(["model=tiny-random", "env=calculator", f"model.max_model_len={room}"]), tiny_model, {"data.train": [question]})


def test_a_max_model_len_past_the_model_s_positions_is_refused_before_any_role_starts(tiny_model):
    """vLLM refused it when the engine's actor started: an ActorDiedError around a pydantic error."""
    from rlvr.runtime.sizing import check_model_length

    check_model_length(compose(["model=tiny-random", "model.max_model_len=1024"]), tiny_model)  # its 1024 positions
    with pytest.raises(ConfigError, match=r"model\.max_model_len=2048 is more than .*max_position_embeddings=1024"):
        check_model_length(compose(["model=tiny-random", "model.max_model_len=2048"]), tiny_model)
    # vLLM splits the heads over an engine's devices: 3 for the tiny model's 2 failed inside every engine actor
    check_model_length(compose(["model=tiny-random", "cluster.tensor_parallel=2"]), tiny_model)
    with pytest.raises(ConfigError, match=r"cluster\.tensor_parallel=3: must divide .*'s 2 attention heads"):
        check_model_length(compose(["model=tiny-random", "cluster.tensor_parallel=3"]), tiny_model)


# ---- found surviving mutants (2026-12-07) -------------------------------------------------------------


def planned(n_prompt: int, n_resp: int) -> "Trajectory":
    from rlvr.types import Trajectory

    return Trajectory(list(range(n_prompt)), list(range(n_resp)), [-1.0] * n_resp)


def test_auto_kv_cache_rounds_an_engines_share_of_the_largest_call_up(monkeypatch):
    """A mutant of sizing.py:227 `math.ceil(largest / num_engines)` -> `largest // num_engines`: 10 sequences over
    3 engines, one engine gets 4 (pool shards requests[i::E]) but its cache is sized for 3."""
    from rlvr.config import compose
    from rlvr.runtime import sizing

    shape = sizing.ModelShape(layers=2, hidden=64, intermediate=128, kv_heads=2, head_dim=32, vocab=100)
    monkeypatch.setattr(sizing, "largest_generate_call", lambda cfg: 10)
    monkeypatch.setattr(sizing, "longest_prompt_tokens", lambda cfg, path: 900)
    monkeypatch.setattr(sizing.ModelShape, "of", classmethod(lambda cls, path: shape))
    cfg = compose(["cluster.num_engines=3", "rollout.kv_cache_gb=auto"])
    per_token = sizing.kv_bytes_per_token(shape, cfg.model.rollout_dtype)
    tokens = min(cfg.model.max_model_len, 900 + cfg.rollout.max_tokens)
    want = sizing.kv_cache_bytes(per_token, 4, tokens, cfg.model.max_model_len, cfg.rollout.block_size) / 2**30
    assert sizing.kv_cache_gb(cfg, "unused") == pytest.approx(want)


def test_the_head_chunk_caps_the_head_but_never_raises_it():
    """A mutant of sizing.py:124 `min(head, head_chunk)` -> `head_chunk`: 2 sequences of 3 response tokens with
    head_chunk=1024 were counted as 1024 head positions, cutting micro-batches ~100x too small."""
    from rlvr.runtime.sizing import ActivationBudget

    budget = ActivationBudget(1e9, per_position=0.0, per_response_position=1.0, shared_prompts=False, packed=False, head_chunk=1024)
    assert budget.bytes([planned(2, 3), planned(2, 3)]) == 6


def test_the_eval_at_start_counts_in_the_largest_generate_call():
    """A mutant of sizing.py:218 `eval_every > 0 or eval.at_start` -> `eval_every > 0`: a job that evaluates only
    at start (256 prompts) sized the engines' cache for its 32-sequence training batches."""
    from rlvr.config import compose
    from rlvr.runtime import sizing

    cfg = compose(["algorithm=grpo", "trainer.eval_every=0", "eval.at_start=true"])
    assert sizing.largest_generate_call(cfg) == max(cfg.eval.size * cfg.eval.n_samples, 32)


def test_the_even_cut_search_is_short_when_each_sequence_already_goes_alone(monkeypatch):
    """A review found the search halving its budget down to 0 (about 1,100 passes over the shard)
    when every sequence was over half the budget: the cut cannot get more even than one a sequence."""
    from rlvr.runtime.sizing import ActivationBudget

    budget = ActivationBudget(100.0, per_position=1.0, per_response_position=0.0, shared_prompts=False, packed=False, head_chunk=0)
    cuts = []
    real_cut = ActivationBudget._cut
    monkeypatch.setattr(ActivationBudget, "_cut", lambda self, sizes, b: cuts.append(b) or real_cut(self, sizes, b))
    shard = [planned(2, 60) for _ in range(8)]  # 61 positions each: two never fit together
    assert [len(m) for m in budget(shard)] == [1] * 8 and len(cuts) == 1
    cuts.clear()
    assert [len(m) for m in budget([planned(2, 20) for _ in range(9)])] == [3, 3, 3] and len(cuts) <= 12
