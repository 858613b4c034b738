"""One prompt, one answer: render, sample on the engines, score in the sandbox."""

from __future__ import annotations

import time
from typing import Callable

from rlvr.data import Problem
from rlvr.generation.base import Rollouts, verifier_counts
from rlvr.rollout.engines import SamplingConfig
from rlvr.sandbox import ScoreRequest
from rlvr.types import GenerationRequest, Trajectory


class SingleTurn:
    """One prompt, one answer. ``render`` gives a problem's prompt as token ids (or text)."""

    def __init__(self, rollout, verifier, render: Callable[[Problem], list[int] | str]):
        self.rollout, self.verifier, self.render = rollout, verifier, render

    def generate(self, problems: list[Problem], ns: list[int], sampling: SamplingConfig, seed: int) -> Rollouts:
        requests = [GenerationRequest(i, self.render(p), n) for i, (p, n) in enumerate(zip(problems, ns)) if n > 0]
        start = time.perf_counter()
        samples = self.rollout.generate(requests, sampling, seed)
        generated = time.perf_counter()
        results, vstats = self.verifier.call("score", [ScoreRequest.for_problem(s.text, problems[s.prompt_index]) for s in samples])
        timings = {"generate": generated - start, "verify": time.perf_counter() - generated}
        trajectories = [
            Trajectory(
                prompt_ids=s.prompt_ids,
                response_ids=s.response_ids,
                rollout_logprobs=s.logprobs,
                weight_version=s.weight_version,
                reward=r.reward,
                correct=bool(r.correct),
                error=r.error,
                group=s.prompt_index,
                truncated=s.truncated,
                text=s.text,
            )
            for s, r in zip(samples, results)
        ]
        counts = {"rollouts": len(samples), "gen_tokens": sum(len(s.response_ids) for s in samples), **verifier_counts(vstats)}
        return Rollouts(trajectories, counts, timings)
