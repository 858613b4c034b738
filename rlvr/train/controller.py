"""BudgetController: the only place that decides how many rollouts each prompt gets.

The mode (`algorithm.sampling`: fixed, dynamic_filter for DAPO, adaptive for V0.5) is a sampler from
`rlvr.sampling`'s registry; the controller gives every sampler the same generation round (`sample`)
and keeps what outlives a step: V0.5's calibration window (`V05Baseline`), checkpointed with the run.

It runs in the driver: it holds the generator (`rlvr.generation`: the engines, the verifier and,
for multi-turn episodes, the environment) and the value server, and returns a `rlvr.types.Batch`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from rlvr.algorithms import overlong_penalty
from rlvr.algorithms.v05 import V05Baseline
from rlvr.data import Problem
from rlvr.generation import Generator, env_rates
from rlvr.generation.base import TERM_COUNT, TERM_SUM
from rlvr.rollout.engines import SamplingConfig
from rlvr.runtime.faults import RestartingRole
from rlvr.sampling import SAMPLERS
from rlvr.sampling.adaptive import warm_start
from rlvr.types import Batch, PromptGroup

__all__ = ["BudgetController", "ControllerConfig", "V05Baseline"]


@dataclass
class ControllerConfig:
    """Built from the `algorithm` config node by `rlvr.train.loop`: no defaults of its own."""

    sampling: str  # fixed | dynamic_filter | adaptive
    n: int  # group size (n0 for adaptive)
    # V0.5
    delta: int
    n_max: int
    kappa: float
    budget_factor: float  # a step may spend this many times the base rollouts
    adaptive_rounds: int  # sequential OSLA rounds of buying `delta` more
    calibration_window: int  # prompts the prior's reliability is fitted on (V05Baseline)
    use_uncertainty: bool  # the value model's uncertainty scales each prior's error sd
    # DAPO
    max_rounds: int
    filter_metric: str  # acc | reward: what must vary within a kept group
    overlong: bool
    overlong_buffer: int
    overlong_penalty_factor: float  # R_len's weight against a 0/1 correctness reward
    max_response_tokens: int  # DAPO's L_max: rollout.max_tokens, or an episode's env.max_tokens


class BudgetController:
    def __init__(
        self,
        cfg: ControllerConfig,
        generator: Generator,
        value_server: RestartingRole | None,
        sampling: SamplingConfig,
    ):
        self.cfg, self.generator, self.value_server, self.sampling = cfg, generator, value_server, sampling
        self.timings: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        if cfg.sampling not in SAMPLERS:
            raise ValueError(f"unknown sampling mode {cfg.sampling!r}; known: {', '.join(SAMPLERS)}")
        self.collect_batch = partial(SAMPLERS[cfg.sampling], self)
        self.v05 = V05Baseline(
            delta=cfg.delta,
            n_max=cfg.n_max,
            kappa=cfg.kappa,
            window=cfg.calibration_window,
            use_uncertainty=cfg.use_uncertainty,
        )

    def state_dict(self) -> dict:
        """What a resumed run needs to decide exactly as this one would: V0.5's calibration window."""
        return {"v05": self.v05.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.v05.load_state_dict(state["v05"])

    # -- helpers ------------------------------------------------------------------------------
    def timed(self, phase: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start
        return out

    def sample(self, problems: list[Problem], ns: list[int], seed: int) -> list[PromptGroup]:
        """Generate ns[i] scored rollouts of problems[i]: one generation round (DAPO's overlong shaping
        applied to the rewards), counted in the step's timings and counts."""
        out = self.generator.generate(problems, ns, self.sampling, seed)
        for phase, seconds in out.timings.items():
            self.timings[phase] = self.timings.get(phase, 0.0) + seconds
        self.counts["rounds"] = self.counts.get("rounds", 0) + 1
        for key, n in out.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        self.counts["generated"] = self.counts.get("generated", 0) + len(out.trajectories)
        self.counts["generated_correct"] = self.counts.get("generated_correct", 0) + sum(t.correct for t in out.trajectories)
        rewards = torch.tensor([t.reward for t in out.trajectories], dtype=torch.float32)
        if self.cfg.overlong:
            lengths = torch.tensor([len(t.response_ids) for t in out.trajectories], dtype=torch.float32)  # an episode's observations too
            penalty = self.cfg.overlong_penalty_factor * overlong_penalty(lengths, self.cfg.max_response_tokens, self.cfg.overlong_buffer)
            rewards = rewards + penalty
            self.counts["overlong_penalty_sum"] = self.counts.get("overlong_penalty_sum", 0.0) + float(penalty.sum())
            penalised = lengths[penalty < 0]
            self.counts["overlong_penalised"] = self.counts.get("overlong_penalised", 0) + len(penalised)
            if len(penalised):  # the shortest answer that paid for its length: never below the soft start
                shortest = int(penalised.min())
                self.counts["overlong_shortest_penalised"] = min(self.counts.get("overlong_shortest_penalised", shortest), shortest)
        for t, r in zip(out.trajectories, rewards.tolist()):
            t.reward = r
        groups = [PromptGroup(p) for p in problems]
        for t in out.trajectories:
            groups[t.group].trajectories.append(t)
        return groups

    def warm_start(self, problems: list[Problem], seed: int) -> dict:
        """V0.5 before step 1 (`rlvr.sampling.adaptive.warm_start`)."""
        return warm_start(self, problems, seed)

    def collect(self, problems: list[Problem], more_problems: Callable[[int], list[Problem]], seed: int) -> Batch:
        """Roll out one step's batch. `more_problems(k)` draws fresh prompts (DAPO only)."""
        self.timings, self.counts = {}, {}
        batch = self.collect_batch(problems, more_problems, seed)
        batch.stats.update({f"time/{k}": v for k, v in self.timings.items()})
        batch.stats.update(self.counts)
        batch.stats.update(env_rates(self.counts))
        batch.stats.update(step_rates(batch.stats))
        return batch


def step_rates(stats: dict) -> dict[str, float]:
    """The means a step's summed counts stand for, taking the sums out of ``stats``: each reward
    term's mean over the items the verifier scored (a multi-turn episode's answering turns each
    count), and over every rollout generated (DAPO's dropped groups and refills too; `accuracy`
    and `reward` are the trained batch's) the accuracy and the overlong penalty."""
    rates = {}
    for key in [k for k in stats if k.startswith(TERM_SUM)]:
        term = key.removeprefix(TERM_SUM)
        total, n = stats.pop(key), stats.pop(f"{TERM_COUNT}{term}", 0)
        if n:  # a term that failed on every item has no mean: left out, as the records leave out every undefined value
            rates[f"reward_term/{term}"] = total / n
    generated, correct = stats.pop("generated", 0), stats.pop("generated_correct", 0)
    penalty = stats.pop("overlong_penalty_sum", None)
    if generated:
        rates["accuracy_generated"] = correct / generated
        if penalty is not None:
            rates["overlong_penalty_mean"] = penalty / generated
    return rates
