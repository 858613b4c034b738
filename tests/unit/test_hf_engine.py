"""The HF engine's own cuts: where a sequence of a group ends when its siblings go on."""

import math

import pytest
import torch
from helpers import tiny_engine_config

from rlvr.rollout.engines import SamplingConfig
from rlvr.rollout.hf_engine import HFEngine
from rlvr.types import GenerationRequest


@pytest.fixture(scope="module")
def engine(tiny_model):
    """The tiny model's HF engine, shared: it keeps no state between generate calls."""
    return HFEngine(tiny_engine_config(tiny_model, "rollout=hf"))


def test_a_sequence_that_meets_a_stop_string_ends_there_not_at_its_siblings_padding(engine):
    """Several sequences of one request: one that met a stop string was padded while the others
    went on, and the padding (the tiny model's pad id 0 was read as missing, so EOS) stayed in its
    response with the log-prob of a token never sampled, -inf under top_p."""
    assert engine.tokenizer.pad_token_id == 0
    stop = ("8", "a")
    torch.manual_seed(0)
    group = engine.generate([GenerationRequest(0, "hello world", 8)], SamplingConfig(temperature=1.0, top_p=0.3, max_tokens=24, stop=stop))[0]
    stopped = [g for g in group if g["finish_reason"] == "stop"]
    assert len(group) == 8 and stopped and len({len(g["response_ids"]) for g in group}) > 1  # some ended early, others went on
    decode = lambda ids: engine.tokenizer.decode(ids)  # noqa: E731
    for g in group:
        assert len(g["logprobs"]) == len(g["response_ids"]) and all(math.isfinite(x) for x in g["logprobs"])
        if g["finish_reason"] == "stop" and g["response_ids"][-1] not in engine.eos_ids:
            # the shortest prefix that holds a stop string: nothing after the token that completed it
            assert len(g["response_ids"]) < 24 and any(s in decode(g["response_ids"]) for s in stop)
            assert not any(s in decode(g["response_ids"][:-1]) for s in stop)


def _softmax_logprobs(model, prompt_ids: list[int], response_ids: list[int], temperature: float) -> torch.Tensor:
    """log π(token) under the temperature-scaled full softmax of an unmasked forward: what vLLM returns
    and the learner recomputes."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + response_ids])).logits[0, len(prompt_ids) - 1 : -1].float()
    return (logits / (temperature or 1.0)).log_softmax(-1).gather(1, torch.tensor(response_ids)[:, None])[:, 0]


def test_only_the_request_s_sampling_settings_act_not_the_model_folder_s(tiny_model, tmp_path):
    """generate() filled what a call left unset from the folder's generation_config.json: a
    repetition_penalty of 1.5 moved the returned log-probs 0.54 from the softmax and changed the
    greedy tokens; vLLM ignores the file when it is given sampling settings."""
    import json
    import shutil

    from transformers import AutoModelForCausalLM

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": 2, "pad_token_id": 0, "do_sample": True, "repetition_penalty": 1.5, "no_repeat_ngram_size": 2,
         "temperature": 0.7, "top_p": 0.8, "top_k": 20}))
    engine = HFEngine(tiny_engine_config(str(folder), "rollout=hf"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for temperature in (0.0, 0.7):
        torch.manual_seed(0)
        sample = engine.generate([GenerationRequest(0, "hello world", 1)], SamplingConfig(temperature=temperature, top_p=1.0, max_tokens=24))[0][0]
        expected = _softmax_logprobs(model, sample["prompt_ids"], sample["response_ids"], temperature)
        assert torch.allclose(torch.tensor(sample["logprobs"]), expected, atol=1e-4), temperature


def test_a_prompt_holding_the_pad_id_is_read_whole(engine):
    """A token-id prompt (a multi-turn continuation) with the pad id in it: generate() built an
    attention mask from ids != pad, so that token was masked out of the context."""
    words = engine.tokenizer("hello world", add_special_tokens=False).input_ids
    prompt = words[:2] + [engine.tokenizer.pad_token_id] + words[2:]
    sample = engine.generate([GenerationRequest(0, prompt, 1)], SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=8))[0][0]
    expected = _softmax_logprobs(engine.model, prompt, sample["response_ids"], 0.0)
    assert torch.allclose(torch.tensor(sample["logprobs"]), expected, atol=1e-4)


def test_greedy_decoding_returns_n_copies(engine):
    """temperature 0 with n > 1 raised ValueError (generate() refuses several sequences without
    sampling or beam search); vLLM returns n identical completions."""
    group = engine.generate([GenerationRequest(0, "hello world", 3)], SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=12))[0]
    assert len(group) == 3 and all(g == group[0] for g in group) and group[1]["response_ids"] is not group[0]["response_ids"]


def test_a_stop_string_the_last_allowed_token_completes_is_a_stop(engine):
    """It was reported as "length" (so truncated: a complete tool call went unparsed, and DAPO's
    mask counted it); vLLM reports "stop"."""
    request = [GenerationRequest(0, "hello world", 1)]
    torch.manual_seed(1)
    free = engine.generate(request, SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=24))[0][0]
    pieces = [engine.tokenizer.decode([t]) for t in free["response_ids"]]
    # a token whose text first appears at position j: a stop string met by token j and no earlier
    j = next(i for i, p in enumerate(pieces) if i >= 3 and len(p) >= 2 and p.isascii() and p.isprintable() and p not in "".join(pieces[:i]))
    for max_tokens in (j + 2, j + 1):
        torch.manual_seed(1)
        sample = engine.generate(request, SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=max_tokens, stop=(pieces[j],)))[0][0]
        assert sample["response_ids"] == free["response_ids"][: j + 1]
        assert sample["finish_reason"] == "stop", max_tokens


# ---- found surviving mutants (2026-12-07) -------------------------------------------------------------


def test_hf_engine_keeps_the_end_token_and_calls_it_a_stop(engine):
    """Greedy: make the 3rd greedy token (first seen there) the end-of-sequence token. The response
    ends with it, included, and finishes on "stop"."""
    request = [GenerationRequest(0, "hello world", 1)]
    free = engine.generate(request, SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16))[0][0]["response_ids"]
    j = next(i for i, t in enumerate(free) if i >= 2 and t not in free[:i])
    eos_ids, config = set(engine.eos_ids), engine.model.generation_config.eos_token_id
    try:
        engine.eos_ids = {free[j]}
        engine.model.generation_config.eos_token_id = [free[j]]
        got = engine.generate(request, SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16))[0][0]
    finally:
        engine.eos_ids, engine.model.generation_config.eos_token_id = eos_ids, config
    assert got["response_ids"] == free[: j + 1] and len(got["logprobs"]) == j + 1
    assert got["finish_reason"] == "stop"


def test_hf_engine_honours_the_request_s_own_token_cap(engine):
    """A multi-turn request's max_tokens (what is left of the episode) caps the response."""
    got = engine.generate([GenerationRequest(0, "hello world", 1, max_tokens=3)], SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=16))[0][0]
    assert len(got["response_ids"]) == 3 and got["finish_reason"] == "length"


def test_hf_engine_a_response_cut_at_the_cap_with_an_unmet_stop_string_is_length(engine):
    """Stop strings given but never met, cut at max_tokens: "length" (truncated). Guards hf_len_le (already killed by test_hf_engine)."""
    got = engine.generate([GenerationRequest(0, "hello world", 1)], SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=6, stop=("\x07never\x07",)))[0][0]
    assert len(got["response_ids"]) == 6 and got["finish_reason"] == "length"
