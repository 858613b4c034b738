"""The learner's log-probs with shared prompts: each distinct prompt of a micro-batch runs once and
its responses continue from its KV cache. They must equal one plain forward per sequence, and the
gradient must equal the per-sequence path's (`learner.share_prompts=false`, and gradient
checkpointing: one forward per sequence, no cache), and so must the packed path's
(`learner.pack_responses=true`: the prompts in one row, every response in another, attention a
prompt at a time, no padding), and
both with the LM head run a few positions at a time under checkpointing (`learner.head_chunk`)."""

import random

import pytest
import torch

from rlvr.learner.forward import collate, positions, response_logprobs
from rlvr.learner.plan import plan_mini_batches
from rlvr.types import Trajectory

TEMPERATURE = 0.7


def sequences(vocab: int) -> list[Trajectory]:
    """3 prompts of different lengths × 3 responses of 0–9 tokens, and a one-token prompt."""
    rng = random.Random(0)
    prompts = [[rng.randrange(1, vocab) for _ in range(rng.randint(3, 12))] for _ in range(3)]
    seqs = [Trajectory(p, [rng.randrange(1, vocab) for _ in range(rng.randint(0, 9))]) for p in prompts for _ in range(3)]
    return [*seqs, Trajectory([5], [7])]


def per_sequence(model, s: Trajectory) -> torch.Tensor:
    """log π of each response token from one unpadded forward of prompt + response."""
    logits = model(torch.cat([s.prompt_ids, s.response_ids])[None], use_cache=False).logits[0].float()
    logp = torch.log_softmax(logits / TEMPERATURE, -1)
    start = len(s.prompt_ids) - 1
    return logp[start + torch.arange(len(s.response_ids)), s.response_ids]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompts_equal_one_forward_per_sequence(tiny_model, attn):
    from transformers import AutoModelForCausalLM  # here, not at collection: every xdist worker collects (3 s each)

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attn)
    seqs = sequences(model.config.vocab_size)
    mb = collate(seqs, 0, torch.device("cpu"))
    assert mb.prompt_ids.shape[0] == 4 and mb.response_ids.shape[0] == len(seqs)  # each prompt once
    grads = {}
    for path in ("shared", "packed", "shared+head-chunks", "packed+head-chunks", "per-sequence", "checkpointing"):  # checkpointing stays on: last
        if path == "checkpointing":
            model.gradient_checkpointing_enable()
        model.train()
        model.zero_grad()
        logp, entropy = response_logprobs(model, mb, TEMPERATURE, share_prompts=path.startswith(("shared", "packed")),
                                          pack_responses=path.startswith("packed"), head_chunk=4 if path.endswith("head-chunks") else 0)
        with torch.no_grad():
            for b, s in enumerate(seqs):
                n = len(s.response_ids)
                torch.testing.assert_close(logp[b, :n], per_sequence(model, s), atol=1e-5, rtol=0)
                assert bool((entropy[b, :n] > 0).all())
                if path.startswith("packed"):
                    assert not logp[b, n:].any()  # padding holds zeros, and gets no gradient
        (logp * mb.mask).sum().backward()
        grads[path] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert grads["shared"].abs().max() > 0
    for path in ("packed", "per-sequence", "checkpointing", "shared+head-chunks", "packed+head-chunks"):
        torch.testing.assert_close(grads["shared"], grads[path], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pack", [True, False])
def test_lockstep_makes_the_same_calls_and_changes_no_number(tiny_model, pack):
    """ZeRO-3 over several ranks (`lockstep`) gathers parameters at every module call, so the calls
    must not depend on the data: with no response token to feed (single-token responses) a stand-in
    response forward still runs, and the LM head runs once instead of in chunks. Its output is not
    used: log-probs and gradients are the ones without lockstep."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    mb = collate([Trajectory([5, 6, 7], [8]), Trajectory([5, 6, 7], [9]), Trajectory([4], [3])], 0, torch.device("cpu"))
    calls = {"decoder": 0, "head": 0}
    model.get_decoder().register_forward_hook(lambda *_: calls.__setitem__("decoder", calls["decoder"] + 1))
    model.get_output_embeddings().register_forward_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1))
    got = {}
    for lockstep in (False, True):
        model.zero_grad()
        calls.update(decoder=0, head=0)
        logp, _ = response_logprobs(model, mb, TEMPERATURE, share_prompts=True, pack_responses=pack, head_chunk=1, lockstep=lockstep)
        counted = dict(calls)
        (logp * mb.mask).sum().backward()
        got[lockstep] = (logp.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), counted)
    assert got[False][2] == {"decoder": 1, "head": 3} and got[True][2] == {"decoder": 2, "head": 1}
    torch.testing.assert_close(got[False][0], got[True][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[False][1], got[True][1], atol=1e-6, rtol=1e-5)


def test_the_planner_keeps_a_prompts_responses_together():
    rng = random.Random(1)
    prompts = [[rng.randrange(100) for _ in range(8)] for _ in range(6)]  # equal lengths: only grouping separates them
    trajectories = [Trajectory(p, [1] * rng.randint(1, 20), group=g) for g, p in enumerate(prompts) for _ in range(4)]
    (mini,) = plan_mini_batches(trajectories, 1, 1, 8, seed=0)[0]
    for micro in mini.micro_batches:
        assert len({t.prompt_key for t in micro}) == 2  # 8 sequences of 2 prompts, not up to 8


def test_packing_leaves_no_padding_and_counts_the_same_real_positions():
    seqs = sequences(500)
    mb = collate(seqs, 0, torch.device("cpu"))
    prompts = {s.prompt_key for s in seqs}
    real = sum(len(p) for p in prompts) + sum(max(len(s.response_ids) - 1, 0) for s in seqs)  # each prompt once, fed tokens
    (run_packed, real_packed), (run_padded, real_padded) = positions(mb, packed=True), positions(mb, packed=False)
    assert real_packed == real_padded == real
    assert run_padded == mb.prompt_ids.numel() + len(seqs) * (mb.response_ids.shape[1] - 1)
    assert real == run_packed < run_padded  # one row of prompts, one of responses


def test_an_empty_response_does_not_switch_off_the_rollout_correction():
    """μ comes per response token, so an empty response has all of its (none): the micro-batch
    still has μ. Before, it turned the correction off for every sequence beside it."""
    with_mu = Trajectory([5, 6], [7, 8], rollout_logprobs=[-0.5, -1.0])
    assert collate([with_mu, Trajectory([5, 6], [], rollout_logprobs=[])], 0, torch.device("cpu")).has_rollout_logprobs
    assert not collate([with_mu, Trajectory([5, 6], [9])], 0, torch.device("cpu")).has_rollout_logprobs


def _tiny(kind: str):
    from transformers import CohereConfig, CohereForCausalLM, Gemma2Config, Gemma2ForCausalLM, GraniteConfig, GraniteForCausalLM

    shape = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 attn_implementation="sdpa")
    torch.manual_seed(0)
    if kind == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**shape, head_dim=32, attn_logit_softcapping=None, final_logit_softcapping=2.0))
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(30)  # logits large enough for the cap to bite
    elif kind == "granite":
        model = GraniteForCausalLM(GraniteConfig(**shape, logits_scaling=4.0))
    else:
        model = CohereForCausalLM(CohereConfig(**shape, logit_scale=0.25))
    return model.eval()


@pytest.mark.parametrize("kind", ["gemma2", "granite", "cohere"])
@pytest.mark.parametrize("share, pack", [(False, False), (True, False), (True, True)])
def test_log_probs_apply_what_the_model_does_after_its_lm_head(kind, share, pack):
    """The head was called directly, skipping Gemma 2's final soft-cap, Granite's logits_scaling and
    Cohere's logit_scale, which the model's forward and vLLM apply: π was another policy (35 nats
    apart under Gemma 2's cap), with no error."""
    model = _tiny(kind)
    s = Trajectory(list(range(3, 9)), list(range(20, 26)))
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.cat([s.prompt_ids, s.response_ids])[None]).logits[0].float() / 0.7, -1)
        expected = reference[5 + torch.arange(6), s.response_ids]
        got, _ = response_logprobs(model, collate([s], 0, "cpu"), 0.7, share, pack)
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)


def test_the_learner_refuses_a_model_whose_logits_it_would_not_reproduce():
    """A family that scales its logits in a way `final_logits` does not know (HyperCLOVA X multiplies
    where Granite divides; Inkling cuts its vocabulary) gave another policy's log-probs, silently."""
    from rlvr.learner.forward import check_head_matches

    for kind in ("gemma2", "granite", "cohere"):
        check_head_matches(_tiny(kind))
    cohere = _tiny("cohere")
    cohere.config.logit_scale = 4.0  # the model multiplies by the 0.25 it was built with
    with pytest.raises(ValueError, match=r"CohereForCausalLM \(cohere\) transforms its logits after the LM head"):
        check_head_matches(cohere)


def test_a_sliding_window_shorter_than_the_job_s_length_is_refused(tmp_path):
    """The learner masks full causal attention: past a Mistral or Gemma 3 window its log-probs were
    another policy's (per sequence), or it crashed (shared prompts, packing)."""
    from transformers import MistralConfig

    from rlvr.config import ConfigError, compose
    from rlvr.runtime.sizing import check_model_length

    MistralConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  sliding_window=256, max_position_embeddings=4096).save_pretrained(tmp_path)
    check_model_length(compose(["model=tiny-random", "model.max_model_len=256"]), str(tmp_path))
    with pytest.raises(ConfigError, match="sliding window of 256 tokens.*model.max_model_len <= 256"):
        check_model_length(compose(["model=tiny-random", "model.max_model_len=512"]), str(tmp_path))
    from transformers import Qwen2Config

    full = tmp_path / "full"  # a window on paper, no layer using it
    Qwen2Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=256, max_window_layers=2).save_pretrained(full)
    check_model_length(compose(["model=tiny-random", "model.max_model_len=512"]), str(full))
