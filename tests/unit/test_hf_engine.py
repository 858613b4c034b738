"""The HF engine's own cuts: where a sequence of a group ends when its siblings go on."""

import math

import torch
from helpers import tiny_engine_config

from rlvr.rollout.engines import SamplingConfig
from rlvr.rollout.hf_engine import HFEngine
from rlvr.types import GenerationRequest


def test_a_sequence_that_meets_a_stop_string_ends_there_not_at_its_siblings_padding(tiny_model):
    """Several sequences of one request: one that met a stop string was padded while the others
    went on, and the padding (the tiny model's pad id 0 was read as missing, so EOS) stayed in its
    response with the log-prob of a token never sampled, -inf under top_p."""
    engine = HFEngine(tiny_engine_config(tiny_model, "rollout=hf"))
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
