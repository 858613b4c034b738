"""An episode with an environment (`rlvr.envs`): the model's turns, tool calls run in the sandbox, the
environment's observations, until it ends or a limit is hit; token in, token out."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

from rlvr.data import Problem
from rlvr.envs import Step
from rlvr.envs.tools import PARSERS, STOP_AFTER_CALL, MalformedCall, ToolCall, tool_prompt, tool_schemas
from rlvr.generation.base import Rollouts, verifier_counts
from rlvr.rollout.engines import SamplingConfig
from rlvr.sandbox import ScoreRequest, ScoreResult
from rlvr.seeds import turn_seed
from rlvr.types import GenerationRequest, Sample, Trajectory


class ChatTokens:
    """A conversation's token ids, built turn by turn: the first messages through the chat template
    once, then each observation on its own, with the markers the template puts around it."""

    _MARK = "\x1frlvr-turn\x1f"

    def __init__(self, tokenizer, tools: list[dict]):
        self.tok, self.tools = tokenizer, tools
        probe = [{"role": "user", "content": "x"}]
        # a template with no place for tools renders the same with and without them
        self.template_takes_tools = bool(tools) and self._render(probe, True, tools) != self._render(probe, True, None)
        self.dummy = probe + [{"role": "assistant", "content": self._MARK}]
        closed = self._render(self.dummy, False, None)
        self.turn_end = closed[closed.index(self._MARK) + len(self._MARK) :]  # what ends an assistant turn ("<|im_end|>\n")
        self.eos_id, self.eos_text = tokenizer.eos_token_id, tokenizer.eos_token or ""
        self.observation_ids([], [{"role": "user", "content": "x"}])  # a template it cannot follow fails here, before any generation

    def _render(self, messages: list[dict], generation_prompt: bool, tools: list[dict] | None) -> str:
        kwargs = {"tools": tools} if tools else {}
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs)

    def encode(self, text: str) -> list[int]:
        # an environment's or a tool's text may hold lone surrogates, which the fast tokenizer refuses
        return self.tok.encode(text.encode("utf-8", "replace").decode("utf-8"), add_special_tokens=False)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if self.tools and not self.template_takes_tools:  # the tools go into the system message instead
            block = tool_prompt(self.tools)
            if messages and messages[0]["role"] == "system":
                messages = [{"role": "system", "content": f"{block}\n\n{messages[0]['content']}"}, *messages[1:]]
            else:
                messages = [{"role": "system", "content": block}, *messages]
        return self.encode(self._render(messages, True, self.tools if self.template_takes_tools else None))

    def observation_ids(self, turn_ids: list[int], messages: list[dict]) -> list[int]:
        """After a model turn ending in ``turn_ids``: the rest of its end marker (the model wrote the
        end-of-turn token itself, or stopped after a tool call), ``messages`` in their roles, and the
        next assistant header. Tokenized alone and appended, never merged with the model's ids."""
        close = self.turn_end
        if turn_ids and turn_ids[-1] == self.eos_id and close.startswith(self.eos_text):
            close = close[len(self.eos_text) :]
        # what follows the dummy turn's end once `messages` follow it; not a diff against the dummy
        # rendered last, which templates render differently (Qwen3 gives only the last assistant
        # turn its empty <think></think> block)
        after = self._render(self.dummy + messages, True, None)
        end = after.find(self._MARK + self.turn_end)
        if end < 0:
            raise ValueError("the chat template ends an assistant turn differently once messages follow it; cannot append observations")
        return self.encode(close + after[end + len(self._MARK + self.turn_end) :])


@dataclass
class Episode:
    group: int
    problem: Problem
    messages: list[dict]
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[float] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    last: Sample | None = None  # the model's latest turn
    scores: list[ScoreResult] = field(default_factory=list)  # the verifier's, of each answer turn
    tool_calls: int = 0
    ended: str | None = None  # done | max_turns | max_tokens | turn_tokens
    reward: float = 0.0
    correct: bool = False

    def add_turn(self, s: Sample) -> None:
        self.last = s
        self.response_ids += s.response_ids.tolist()
        self.loss_mask += [1.0] * len(s.response_ids)
        self.logprobs += s.logprobs.tolist()
        self.versions.append(s.weight_version)
        self.messages.append({"role": "assistant", "content": s.text})

    def add_observation(self, messages: list[dict], ids: list[int]) -> None:
        self.messages += messages
        self.response_ids += ids
        self.loss_mask += [0.0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def finish(self, step: Step, reason: str) -> None:
        self.ended, self.reward, self.correct = reason, float(step.reward), bool(step.correct)

    def trajectory(self, text: str) -> Trajectory:
        return Trajectory(
            prompt_ids=self.prompt_ids,
            response_ids=self.response_ids,
            rollout_logprobs=self.logprobs,
            loss_mask=self.loss_mask,
            weight_version=min(self.versions),  # the oldest weights any of its turns was sampled with
            reward=self.reward,
            correct=self.correct,
            error=self.scores[-1].error if self.scores else None,
            group=self.group,
            truncated=self.ended in ("turn_tokens", "max_tokens"),
            text=text,
        )


class MultiTurn:
    """Episodes with an environment. Each turn, every running episode continues from its ids; a turn
    with tool calls gets their results (run in the sandbox), a turn without is an answer that the
    verifier scores and the environment answers. Limits: ``max_turns`` model turns, ``max_tokens``
    response tokens in all (observations included), and the sampling's per-turn ``max_tokens``."""

    def __init__(self, rollout, verifier, tokenizer, env, messages_of: Callable[[Problem], list[dict]],
                 max_turns: int, max_tokens: int, max_model_len: int, parser: str):
        if parser not in PARSERS:
            raise ValueError(f"unknown tool-call parser env.parser={parser!r}; known: {sorted(PARSERS)}")
        self.rollout, self.verifier, self.env, self.messages_of = rollout, verifier, env, messages_of
        self.max_turns, self.max_tokens, self.max_model_len = int(max_turns), int(max_tokens), int(max_model_len)
        self.parse, self.stop = PARSERS[parser], STOP_AFTER_CALL[parser] if env.tools else ()
        self.chat = ChatTokens(tokenizer, tool_schemas(env.tools))
        self.tokenizer = tokenizer

    def _room(self, e: Episode) -> int:
        used = len(e.response_ids)
        return min(self.max_tokens - used, self.max_model_len - len(e.prompt_ids) - used)

    def _go_on(self, e: Episode, messages: list[dict]) -> bool:
        """Append an observation if the episode has room for it and one more token; else False."""
        ids = self.chat.observation_ids(e.last.response_ids.tolist(), messages)
        if self._room(e) - len(ids) < 1:
            return False
        e.add_observation(messages, ids)
        return True

    def first_prompt(self, problem: Problem) -> tuple[list[dict], list[int]]:
        """The episode's first messages, from the environment, and their ids with the tool block."""
        first = self.env.reset(problem, self.messages_of(problem))
        return first, self.chat.prompt_ids(first)

    def generate(self, problems: list[Problem], ns: list[int], sampling: SamplingConfig, seed: int) -> Rollouts:
        episodes = []
        for i, (p, n) in enumerate(zip(problems, ns)):
            first, ids = self.first_prompt(p)
            if self.max_model_len - len(ids) < 1:
                raise ValueError(f"problem {p.uid}: the episode's first prompt (tools included) has {len(ids)} tokens, "
                                 f"no room to answer within model.max_model_len={self.max_model_len}")
            episodes += [Episode(i, p, [dict(m) for m in first], ids) for _ in range(n)]
        sampling = replace(sampling, stop=tuple(sampling.stop) + self.stop)
        counts: Counter = Counter()
        timings: Counter = Counter()
        for turn in range(self.max_turns):
            active = [e for e in episodes if e.ended is None]
            if not active:
                break
            requests = [GenerationRequest(j, e.prompt_ids + e.response_ids, 1, min(sampling.max_tokens, self._room(e)))
                        for j, e in enumerate(active)]
            start = time.perf_counter()
            for s in self.rollout.generate(requests, sampling, turn_seed(seed, turn)):
                active[s.prompt_index].add_turn(s)
            timings["generate"] += time.perf_counter() - start
            counts["env/turns"] += len(active)
            last_turn = turn == self.max_turns - 1
            calls = {id(e): ([] if e.last.truncated or last_turn else self.parse(e.last.text)) for e in active}
            with_calls = [e for e in active if calls[id(e)]]
            observations = self._run_tools(with_calls, calls, counts, timings)
            went_on = {id(e) for e, obs in zip(with_calls, observations) if self._go_on(e, obs)}
            out_of_room = {id(e) for e in with_calls} - went_on  # a call whose result did not fit: scored as the answer
            self._answer([e for e in active if id(e) not in went_on], last_turn, counts, timings, out_of_room, sampling.max_tokens)
        for e in episodes:
            counts[f"env/ended/{e.ended}"] += 1
        counts.update({
            "rollouts": len(episodes),
            "gen_tokens": sum(int(sum(e.loss_mask)) for e in episodes),
            "env/episodes": len(episodes),
            "env/tool_calls": sum(e.tool_calls for e in episodes),
        })
        trajectories = [e.trajectory(self.tokenizer.decode(e.response_ids)) for e in episodes]
        return Rollouts(trajectories, dict(counts), dict(timings))

    def _run_tools(self, episodes: list[Episode], calls: dict, counts: Counter, timings: Counter) -> list[list[dict]]:
        """Each episode's tool calls, run in the sandbox in one batch: its tool messages, in call order.
        A call that cannot be read, names no tool, has bad arguments, raises, hangs or runs out of
        memory gets an error message, and is counted by kind."""
        runnable = [c.to_json() for e in episodes for c in calls[id(e)] if isinstance(c, ToolCall)]
        start = time.perf_counter()
        results = iter(self.verifier.call("run_tools", runnable)[0] if runnable else [])
        timings["tools"] += time.perf_counter() - start
        observations = []
        for e in episodes:
            messages = []
            for c in calls[id(e)]:
                e.tool_calls += 1
                if isinstance(c, MalformedCall):
                    kind, text = "malformed", c.message
                else:
                    r = next(results)
                    kind = r.outcome if r.error is None else r.error.split(":")[0]
                    text = r.output if r.error is None else f"the tool call failed: {r.error}"
                if kind != "ok":
                    counts[f"env/tool_errors/{kind}"] += 1
                    text = f"error: {text}"
                messages.append({"role": "tool", "content": text})
            observations.append(messages)
        return observations

    def _answer(self, episodes: list[Episode], last_turn: bool, counts: Counter, timings: Counter, out_of_room: set[int] = frozenset(),
                turn_cap: int | None = None) -> None:
        """Score each turn that answered (or had to), and let the environment say what follows. An
        episode that ran out of length ends as such (truncated) even where the environment would
        stop on any answer: DAPO's `mask_truncated` and `truncated_frac` read it. A turn cut short of
        ``turn_cap`` (the sampling's max_tokens) was cut by what was left of the episode's length."""
        if not episodes:
            return
        start = time.perf_counter()
        results, vstats = self.verifier.call("score", [ScoreRequest.for_problem(e.last.text, e.problem) for e in episodes])
        timings["verify"] += time.perf_counter() - start
        counts.update(verifier_counts(vstats))
        for e, r in zip(episodes, results):
            if not e.scores:
                counts["env/first_answers_correct"] += int(r.correct)
            e.scores.append(r)
            step = self.env.step(e.messages, e.scores)
            if e.last.truncated:
                e.finish(step, "turn_tokens" if turn_cap is None or len(e.last.response_ids) >= turn_cap else "max_tokens")
            elif id(e) in out_of_room:
                e.finish(step, "max_tokens")
            elif step.observation is None:
                e.finish(step, "done")
            elif last_turn:
                e.finish(step, "max_turns")
            elif not self._go_on(e, step.observation):
                e.finish(step, "max_tokens")
