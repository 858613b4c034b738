"""What an episode, a sample and a micro-batch carry, driven by a scripted engine on the tiny model's
tokenizer: the reward of the last answer, the token budget to the token, the turn limit, truncation,
tool calls only from complete turns, and the loss mask and μ as the learner collates them. Each test
was written for a mutant that every earlier test let through (mutation round, 2026-12-07)."""

import pytest
import torch

from rlvr.data import Problem
from rlvr.envs import Step
from rlvr.envs.retry import Retry
from rlvr.rollout.engines import SamplingConfig
from rlvr.sandbox.messages import ScoreResult
from rlvr.types import Sample, Trajectory


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


class Scripted:
    """Turn t of every episode answers script[t] (the last entry repeated), cut at the request's cap
    as vLLM cuts it; token i of turn t has log-prob -(t + (i + 1) / 100); turn t's weights are versions[t]."""

    def __init__(self, tok, script, versions=None):
        self.tok, self.script, self.versions, self.calls = tok, script, versions, []

    def generate(self, requests, sampling, seed):
        turn = len(self.calls)
        self.calls.append((requests, sampling, seed))
        out = []
        for r in requests:
            wanted = self.script[min(turn, len(self.script) - 1)]
            cap = min(sampling.max_tokens, r.max_tokens if r.max_tokens is not None else sampling.max_tokens)
            ids = wanted[:cap]
            cut = len(ids) < len(wanted)
            lps = torch.tensor([-(turn + (i + 1) / 100) for i in range(len(ids))])
            out.append(Sample(r.prompt_index, torch.tensor(r.prompt), torch.tensor(ids, dtype=torch.long), self.tok.decode(ids, skip_special_tokens=True),
                              lps, "length" if cut else "stop", cut, self.versions[turn] if self.versions else 0))
        return out


class Verifier:
    """An answer holding "right" is correct; any other answer scores 0 with a timeout error. Tools answer "42"."""

    def __init__(self):
        self.tool_calls = []

    def call(self, method, requests):
        if method == "run_tools":
            self.tool_calls += requests
            return [ScoreResult(0.0, True, outcome="ok", output="42") for _ in requests], {}
        return [ScoreResult(1.0, True) if "right" in r.completion else ScoreResult(0.0, False, error="timeout") for r in requests], {}


def multi_turn(tok, engine, env, max_turns=4, max_tokens=1000, max_model_len=4096, parser="none", verifier=None):
    from rlvr.generation import MultiTurn

    return MultiTurn(engine, verifier or Verifier(), tok, env, lambda p: [{"role": "user", "content": p.question}],
                     max_turns=max_turns, max_tokens=max_tokens, max_model_len=max_model_len, parser=parser)


def ids(tok, text, eos=True):
    return tok.encode(text, add_special_tokens=False) + ([tok.eos_token_id] if eos else [])


def observation_len(tok, turn, message):
    from rlvr.generation import ChatTokens

    return len(ChatTokens(tok, []).observation_ids(turn, [{"role": "user", "content": message}]))


# ---- multi_turn.py ----------------------------------------------------------------------------------


def test_a_retry_episode_keeps_the_last_answer_s_reward_the_oldest_version_and_per_turn_seeds(tok):
    """Wrong, then right: the reward is the last answer's (1 - 0.1 for one retry), the error is the last
    answer's (none), the weight version is the oldest turn's, each turn draws its own seed, the first
    answer is counted as wrong, and gen_tokens counts the model's tokens only."""
    from rlvr.seeds import turn_seed

    wrong, right = ids(tok, "wrong"), ids(tok, "right")
    engine = Scripted(tok, [wrong, right], versions=[3, 5])
    out = multi_turn(tok, engine, Retry(attempts=3, turn_penalty=0.1)).generate([Problem("t/0", "Q?", "1")], [1], SamplingConfig(1.0, 1.0, 64), seed=7)
    (t,) = out.trajectories
    assert out.counts["env/ended/done"] == 1
    assert t.reward == pytest.approx(0.9) and t.correct and t.error is None
    assert t.weight_version == 3
    assert [c[2] for c in engine.calls] == [turn_seed(7, 0), turn_seed(7, 1)]
    assert out.counts["env/first_answers_correct"] == 0
    assert out.counts["gen_tokens"] == len(wrong) + len(right)


def test_max_turns_is_the_number_of_model_turns_and_the_last_turn_is_scored(tok):
    """Always wrong, max_turns=2: two engine calls, the episode ends on max_turns after the second
    answer, which is the end of its response (no trailing observation)."""
    wrong = ids(tok, "wrong")
    engine = Scripted(tok, [wrong])
    out = multi_turn(tok, engine, Retry(attempts=10, turn_penalty=0.1), max_turns=2).generate([Problem("t/0", "Q?", "1")], [1], SamplingConfig(1.0, 1.0, 64), seed=0)
    (t,) = out.trajectories
    assert len(engine.calls) == 2 and out.counts["env/turns"] == 2
    assert out.counts.get("env/ended/max_turns") == 1 and not t.truncated
    assert t.reward == pytest.approx(-0.1)
    k = observation_len(tok, wrong, "Incorrect, try again.")
    assert t.response_ids.tolist()[-len(wrong):] == wrong and t.num_tokens == 2 * len(wrong) and len(t.response_ids) == 2 * len(wrong) + k


@pytest.mark.parametrize("extra", [1, 0])
def test_the_episode_token_budget_is_exact(tok, extra):
    """A 11-token turn and a K-token observation. env.max_tokens = 11 + K + 1: the observation fits with
    one token to spare, and the second turn gets exactly that token (cut: max_tokens). env.max_tokens =
    11 + K: the observation does not fit, the episode ends after its first turn on max_tokens."""
    turn = [tok.encode("hello", add_special_tokens=False)[0]] * 10 + [tok.eos_token_id]
    k = observation_len(tok, turn, "Incorrect, try again.")
    budget = 11 + k + extra
    out = multi_turn(tok, Scripted(tok, [turn]), Retry(attempts=10), max_tokens=budget).generate([Problem("t/0", "Q?", "1")], [1], SamplingConfig(1.0, 1.0, 64), seed=0)
    (t,) = out.trajectories
    assert len(t.response_ids) == (budget if extra else 11)
    assert out.counts.get("env/ended/max_tokens") == 1 and t.truncated


def test_the_episode_fits_the_model_length_prompt_included(tok):
    """max_model_len = prompt + 11 + K + 1: the second turn gets one token, prompt + response ==
    max_model_len."""
    turn = [tok.encode("hello", add_special_tokens=False)[0]] * 10 + [tok.eos_token_id]
    k = observation_len(tok, turn, "Incorrect, try again.")
    gen = multi_turn(tok, Scripted(tok, [turn]), Retry(attempts=10))
    prompt = len(gen.first_prompt(Problem("t/0", "Q?", "1"))[1])
    gen.max_model_len = prompt + 11 + k + 1
    out = gen.generate([Problem("t/0", "Q?", "1")], [1], SamplingConfig(1.0, 1.0, 64), seed=0)
    (t,) = out.trajectories
    assert len(t.prompt_ids) + len(t.response_ids) == gen.max_model_len and t.truncated


class OneCall:
    tools = ["rlvr.envs.calculator:calculate"]

    def reset(self, problem, messages):
        return messages

    def step(self, messages, scores):
        return Step(None, scores[-1].reward, scores[-1].correct)


CALL = '<tool_call>{"name": "calculate", "arguments": {"expression": "6*7"}}</tool_call>'


def test_an_env_with_tools_stops_generation_after_a_call(tok):
    """The engine must stop at </tool_call> so the model waits for the result."""
    engine = Scripted(tok, [ids(tok, "right")])
    multi_turn(tok, engine, OneCall(), parser="hermes").generate([Problem("t/0", "Q?", "1")], [1], SamplingConfig(1.0, 1.0, 64), seed=0)
    assert "</tool_call>" in engine.calls[0][1].stop


def test_a_turn_cut_at_its_token_cap_is_not_parsed_for_calls(tok):
    """A turn cut by the per-turn cap after a complete call: no tool runs, it ends on turn_tokens."""
    call = ids(tok, CALL, eos=False)
    engine, verifier = Scripted(tok, [call + ids(tok, " hello" * 30)]), Verifier()
    out = multi_turn(tok, engine, OneCall(), parser="hermes", verifier=verifier).generate(
        [Problem("t/0", "Q?", "1")], [1], SamplingConfig(1.0, 1.0, len(call) + 5), seed=0)
    assert verifier.tool_calls == [] and out.counts["env/tool_calls"] == 0
    assert out.counts.get("env/ended/turn_tokens") == 1 and out.trajectories[0].truncated


def test_a_tool_result_holding_a_lone_surrogate_is_an_observation_not_a_crash(tok):
    """A tool (or an environment) whose text holds half a UTF-16 pair: the tokenizer refused it, and
    `generate` stopped the step with a TypeError naming no episode."""

    class Echoes(Verifier):
        def call(self, method, requests):
            if method == "run_tools":
                return [ScoreResult(0.0, True, outcome="error", output="no such city: \ud83d") for _ in requests], {}
            return super().call(method, requests)

    call = ids(tok, CALL, eos=False)
    out = multi_turn(tok, Scripted(tok, [call, ids(tok, "right")]), OneCall(), parser="hermes", verifier=Echoes()).generate(
        [Problem("t/0", "Q?", "1")], [1], SamplingConfig(1.0, 1.0, len(call) + 10), seed=0)
    assert out.counts["env/tool_calls"] == 1 and out.trajectories[0].reward == 1.0


def test_a_call_whose_result_does_not_fit_ends_the_episode_truncated(tok):
    """A complete call (stopped at </tool_call>) with 2 tokens of budget left: its result does not fit,
    the episode ends on max_tokens, truncated."""
    call = ids(tok, CALL, eos=False)
    out = multi_turn(tok, Scripted(tok, [call]), OneCall(), parser="hermes", max_tokens=len(call) + 2).generate(
        [Problem("t/0", "Q?", "1")], [1], SamplingConfig(1.0, 1.0, len(call) + 10), seed=0)
    assert out.counts.get("env/ended/max_tokens") == 1 and out.trajectories[0].truncated


# ---- single_turn.py ---------------------------------------------------------------------------------


def test_single_turn_scores_each_sample_against_its_own_problem_and_keeps_group_and_truncation(tok):
    """Two problems (answers "right" and "left"), one sample each; the second cut at max_tokens."""
    from rlvr.generation.single_turn import SingleTurn

    class Engine:
        def generate(self, requests, sampling, seed):
            return [Sample(r.prompt_index, torch.tensor([1, 2]), torch.tensor([5, 6]), r.prompt, torch.tensor([-0.1, -0.2]), "stop" if i == 0 else "length", i == 1, 4)
                    for i, r in enumerate(requests)]

    class ByAnswer:
        def call(self, method, requests):
            return [ScoreResult(float(r.completion == r.answer), r.completion == r.answer) for r in requests], {}

    problems = [Problem("t/0", "right", "right"), Problem("t/1", "left", "left")]
    out = SingleTurn(Engine(), ByAnswer(), lambda p: p.question).generate(problems, [1, 1], SamplingConfig(1.0, 1.0, 8), seed=0)
    assert [t.reward for t in out.trajectories] == [1.0, 1.0]
    assert [t.group for t in out.trajectories] == [0, 1]
    assert [t.truncated for t in out.trajectories] == [False, True]


# ---- forward.py -------------------------------------------------------------------------------------


def test_collate_keeps_the_loss_mask_and_aligned_rollout_logprobs():
    """An episode's observation tokens (mask 0) stay out of the loss, and μ stays on its own token."""
    from rlvr.learner.forward import collate

    t = Trajectory([5, 6], [7, 8, 9, 10], rollout_logprobs=[-0.1, 0.0, 0.0, -0.4], loss_mask=[1.0, 0.0, 0.0, 1.0])
    mb = collate([t, Trajectory([5, 6], [11])], 0, torch.device("cpu"))
    assert mb.mask.tolist() == [[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]]
    assert torch.allclose(mb.rollout_logprobs[0], torch.tensor([-0.1, 0.0, 0.0, -0.4]))


# ---- base.py ----------------------------------------------------------------------------------------


def test_verifier_counts_count_every_failure_kind_reward_errors_included():
    """A reward function that raised is counted in verifier_error."""
    from rlvr.generation.base import verifier_counts

    assert verifier_counts({"items": 5, "timeout": 1, "error": 2}) == {
        "verifier_timeout": 1, "verifier_oom": 0, "verifier_crash": 0, "verifier_error": 2}


def test_loss_share_per_sequence_counts_only_sequences_with_a_token_to_train_on():
    """A micro-batch of one trained sequence and one fully masked (loss_mask all 0): with the mini-batch's 2 trainable sequences its share is 1/2, not 2/2 (the shares of
    a mini-batch's micro-batches must sum to 1)."""
    from rlvr.learner.forward import collate, loss_share
    from rlvr.types import MiniBatch

    trained, masked = Trajectory([5, 6], [7, 8]), Trajectory([5, 6], [9], loss_mask=[0.0])
    mb = collate([trained, masked], 0, torch.device("cpu"))
    plan = MiniBatch([[trained, masked], [Trajectory([4], [3])]], tokens=3, sequences=2)
    assert loss_share(mb, plan, "seq-mean-token-mean") == 0.5
