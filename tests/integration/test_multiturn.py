"""Multi-turn episodes on real parts: the tiny model on vLLM, the Ray verifier pool with tools in its
sandboxed workers, and a DeepSpeed learner recomputing the episodes' log-probs.

The model is random, so what it "calls" is scripted: a parser that returns this test's calls turn by
turn stands in for reading them from the text (tests/unit/test_envs.py tests the real parser).
"""

import pytest
import ray
import torch
from helpers import kept_engine, kept_learner, tiny_engine_config, tiny_learner_config

from rlvr.config import compose
from rlvr.data import Problem
from rlvr.envs import Step
from rlvr.envs.tools import MalformedCall, ToolCall
from rlvr.generation import ChatTokens, MultiTurn
from rlvr.rollout.engines import SamplingConfig
from rlvr.rollout.pool import RolloutPool
from rlvr.runtime.faults import RestartingRole

TOOLS = [f"tools_for_tests:{name}" for name in ("echo", "boom", "hang", "hog")]
# turn 1: a tool that hangs past the deadline, one that raises, a call that is not JSON;
# turn 2: a good call, an unknown tool, a wrong argument type, a tool that runs out of memory;
# turn 3 (the last): the answer
SCRIPT = [
    [ToolCall("hang", {"seconds": 60.0}), ToolCall("boom", {"message": "kaput"}), MalformedCall("the tool call is not valid JSON")],
    [ToolCall("echo", {"text": "5"}), ToolCall("nope", {}), ToolCall("echo", {"text": 3}), ToolCall("hog", {"megabytes": 4096})],
    [],
]


class ScriptedCalls:
    """The calls of SCRIPT's turn for each of ``episodes`` episodes (parsed once each per turn, in order)."""

    def __init__(self, script: list[list], episodes: int):
        self.script, self.episodes, self.parsed = script, episodes, 0

    def __call__(self, text: str) -> list:
        turn = self.parsed // self.episodes
        self.parsed += 1
        return list(self.script[turn])


class EndAtAnswer:
    tools = TOOLS

    def reset(self, problem, messages):
        return messages

    def step(self, messages, scores):
        return Step(None, scores[-1].reward, scores[-1].correct)


@pytest.fixture(scope="module")
def episodes_on_real_parts(ray_session, tiny_model):
    from transformers import AutoTokenizer

    from rlvr.sandbox.actor import VerifierPool

    engine = kept_engine(tiny_engine_config(tiny_model))
    verifier = RestartingRole("verifier", lambda: VerifierPool.options(num_cpus=0.1).remote(
        [{"fn": "math"}], num_workers=2, timeout_s=2.0, memory_mb=512, tools=TOOLS), 0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    cfg = compose(["model=tiny-random"])
    generator = MultiTurn(RolloutPool([engine]), verifier, tokenizer, EndAtAnswer(), lambda p: [{"role": "user", "content": p.question}],
                          max_turns=3, max_tokens=600, max_model_len=cfg.model.max_model_len, parser="hermes")
    # The random model reads nothing, and the four tools' descriptions alone outgrow its 512 positions.
    generator.chat = ChatTokens(tokenizer, [])
    # A random model seldom ends a turn by itself: stop it at a common character, so no turn is cut at max_tokens.
    sampling = SamplingConfig(1.0, 1.0, 16, stop=("a", "e", "o", " "))
    generator.parse = ScriptedCalls(SCRIPT, episodes=2)
    out = generator.generate([Problem("t/0", "What is 2 + 3?", "5")], [2], sampling, seed=0)
    yield generator, sampling, tokenizer, out
    verifier.kill()


@pytest.mark.slow
def test_a_three_turn_episode_gets_every_tool_error_as_an_observation_and_goes_on(episodes_on_real_parts):
    generator, sampling, tokenizer, out = episodes_on_real_parts
    counts = out.counts
    assert len(out.trajectories) == 2 and counts["env/episodes"] == 2
    assert counts["env/turns"] == 6 and counts["env/ended/done"] == 2  # three turns each, ended by the environment
    assert counts["env/tool_calls"] == 2 * 7
    for kind in ("timeout", "raised", "malformed", "unknown_tool", "bad_arguments", "oom"):
        assert counts[f"env/tool_errors/{kind}"] == 2, (kind, counts)
    for t in out.trajectories:
        observed = tokenizer.decode(t.response_ids[t.loss_mask == 0].tolist())
        assert observed.count("<|im_start|>tool\n") == 7
        for text in ("error: the tool call failed: timeout", "error: RuntimeError: kaput", "error: the tool call is not valid JSON",
                     "\n5<|im_end|>", "error: unknown tool 'nope'", "must be str", "error: the tool call failed: oom"):
            assert text in observed, (text, observed)
        assert sum(t.loss_mask) > 0 and all(lp == 0.0 for lp, m in zip(t.rollout_logprobs, t.loss_mask) if m == 0)
        assert all(lp < 0.0 for lp, m in zip(t.rollout_logprobs, t.loss_mask) if m == 1)
    assert counts["gen_tokens"] == sum(t.num_tokens for t in out.trajectories)

    # the pool replaced the workers the hang and the memory hog took; the next episodes run normally
    generator.parse = ScriptedCalls([[ToolCall("echo", {"text": "ok"})], []], episodes=2)
    generator.max_turns = 2
    again = generator.generate([Problem("t/1", "What is 1 + 1?", "2")], [2], sampling, seed=1)
    assert again.counts["env/tool_calls"] == 2 and not any(k.startswith("env/tool_errors/") for k in again.counts)


@pytest.mark.slow
def test_the_learner_log_probs_equal_the_engine_s_on_the_model_tokens(episodes_on_real_parts, tiny_model):
    _, sampling, _, out = episodes_on_real_parts
    learner = kept_learner(tiny_learner_config(tiny_model, threads=1))
    recomputed = ray.get(learner.logprobs.remote(out.trajectories, sampling.temperature))
    for t, lp in zip(out.trajectories, recomputed):
        mask = t.loss_mask == 1
        assert len(lp) == len(t.response_ids)
        torch.testing.assert_close(torch.tensor(lp)[mask], t.rollout_logprobs[mask], atol=2e-3, rtol=0)


@pytest.mark.slow
def test_an_answer_cut_at_its_length_ends_the_episode_truncated(episodes_on_real_parts):
    """The environment ends an episode on any answer, but an answer cut at the turn's max_tokens is
    a truncated episode (DAPO's mask_truncated, truncated_frac). It ended as 'done', untruncated."""
    generator, _, _, _ = episodes_on_real_parts
    generator.parse, generator.max_turns = (lambda text: []), 2
    cut = SamplingConfig(1.0, 1.0, 4)  # no stop string: the random model's turns run to 4 tokens
    out = generator.generate([Problem("t/2", "What is 2 + 2?", "4")], [2], cut, seed=2)
    assert out.counts["env/ended/turn_tokens"] == 2
    assert all(t.truncated and len(t.response_ids) == 4 for t in out.trajectories)
