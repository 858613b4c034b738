"""BudgetController: the only place that decides how many rollouts each prompt gets.

Modes (`algorithm.sampling`):
- `fixed`: n rollouts per prompt (GRPO, Dr.GRPO, RLOO, CISPO).
- `dynamic_filter` (DAPO): drop groups whose correctness (`filter_metric=acc`, DAPO's and verl's
  choice) or shaped reward (`reward`) is all equal, and draw fresh prompts until the batch is full
  of mixed groups, for at most `max_rounds` generation rounds.
- `adaptive` (V0.5): ask the ValueServer for a prior p0, sample n0, run the reliability test,
  buy extra rollouts (OSLA) under the step budget, and fuse prior and data into a per-prompt
  baseline, through `V05Baseline`, which calibrates the prior's reliability over the last
  `calibration_window` prompts rather than one step's few. `warm_start` fills that window and the
  value context from the initial policy's rollouts before step 1, so the first steps can trust a prior.

It runs in the driver: it holds the generator (`rlvr.generation`: the engines, the verifier and,
for multi-turn episodes, the environment) and the value server, and returns a `rlvr.batch.Batch`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from rlvr.algorithms import dynamic_sampling_keep_mask, overlong_penalty, v05
from rlvr.algorithms.v05 import V05Baseline
from rlvr.batch import Batch, PromptGroup
from rlvr.data import Problem
from rlvr.generation import Generator, env_rates
from rlvr.rollout.engines import SamplingConfig
from rlvr.runtime.faults import RestartingRole

log = logging.getLogger(__name__)

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
    def _timed(self, phase: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start
        return out

    def _sample_and_score(self, problems: list[Problem], ns: list[int], seed: int) -> list[PromptGroup]:
        """Generate ns[i] scored rollouts of problems[i]: one generation round."""
        out = self.generator.generate(problems, ns, self.sampling, seed)
        for phase, seconds in out.timings.items():
            self.timings[phase] = self.timings.get(phase, 0.0) + seconds
        self.counts["rounds"] = self.counts.get("rounds", 0) + 1
        for key, n in out.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        rewards = torch.tensor([t.reward for t in out.trajectories], dtype=torch.float32)
        if self.cfg.overlong:
            lengths = torch.tensor([len(t.response_ids) for t in out.trajectories], dtype=torch.float32)  # an episode's observations too
            penalty = overlong_penalty(lengths, self.cfg.max_response_tokens, self.cfg.overlong_buffer)
            rewards = rewards + penalty
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
        """V0.5 before step 1: n0 rollouts of the initial policy on each warm-up prompt (neither
        training nor held-out) fill the value context and the calibration window.

        A window of priors that never saw a context reads as a useless prior, and the first steps
        reject everything (DESIGN.md, "V0.5 starves at the start of a run"). So each half's priors
        are predicted from the other half's outcomes (two-fold cross-fitting: no prior has seen its
        own prompt's outcome), and those (prior, k, n) enter the window. The context then holds
        every warm-up pair. Returns what it cost and what it found.
        """
        self.timings, self.counts = {}, {}
        start = time.perf_counter()
        groups = self._sample_and_score(problems, [self.cfg.n] * len(problems), seed)
        k, n = _successes_and_counts(groups)
        texts, success = [p.question for p in problems], (k / n).tolist()
        empty = self.value_server.snapshot()
        prior, unc = torch.full_like(k, 0.5), torch.full_like(k, 0.5)
        half = len(problems) // 2
        for context, target in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
            self.value_server.load(empty)
            self.value_server.call("add_context", texts[context], success[context])
            p, u = self.value_server.call("predict", texts[target])
            prior[target], unc[target] = torch.tensor(p, dtype=torch.float64), torch.tensor(u, dtype=torch.float64)
        self.value_server.load(empty)
        self.value_server.call("add_context", texts, success)
        self.value_server.snapshot()
        prior = prior.clamp(v05.PRIOR_MIN, v05.PRIOR_MAX)
        self.v05.observe(prior, k, n, unc)
        return {
            "warmup/prompts": len(problems),
            "warmup/rollouts": self.counts.get("rollouts", 0),
            "warmup/gen_tokens": self.counts.get("gen_tokens", 0),
            "warmup/seconds": time.perf_counter() - start,
            "warmup/success": float((k / n).mean()),
            "warmup/prior_brier": float(((prior - k / n) ** 2).mean()),
            "warmup/context_mean_brier": float(((k / n).mean() - k / n).pow(2).mean()),
            "warmup/prior_corr": _corr(prior, k / n),
            "v05/window": len(self.v05),
        }

    # -- the three modes -----------------------------------------------------------------------
    def collect(self, problems: list[Problem], more_problems: Callable[[int], list[Problem]], seed: int) -> Batch:
        """Roll out one step's batch. `more_problems(k)` draws fresh prompts (DAPO only)."""
        self.timings, self.counts = {}, {}
        if self.cfg.sampling == "fixed":
            batch = Batch(self._sample_and_score(problems, [self.cfg.n] * len(problems), seed))
        elif self.cfg.sampling == "dynamic_filter":
            batch = self._collect_dynamic(problems, more_problems, seed)
        elif self.cfg.sampling == "adaptive":
            batch = self._collect_adaptive(problems, seed)
        else:
            raise ValueError(f"unknown sampling mode {self.cfg.sampling!r}")
        batch.stats.update({f"time/{k}": v for k, v in self.timings.items()})
        batch.stats.update(self.counts)
        batch.stats.update(env_rates(self.counts))
        return batch

    def _collect_dynamic(self, problems: list[Problem], more_problems, seed: int) -> Batch:
        target, kept, rounds = len(problems), [], 0
        dropped = dropped_reward_mixed = dropped_acc_mixed = 0
        pending = problems
        while pending and rounds < self.cfg.max_rounds:
            groups = self._sample_and_score(pending, [self.cfg.n] * len(pending), seed * 100 + rounds)
            rounds += 1
            round_batch = Batch(groups)
            ids = round_batch.group_ids()
            acc_mixed = dynamic_sampling_keep_mask(round_batch.correctness(), ids).tolist() if groups else []
            reward_mixed = dynamic_sampling_keep_mask(round_batch.rewards(), ids).tolist() if groups else []
            keep = acc_mixed if self.cfg.filter_metric == "acc" else reward_mixed
            kept += [g for g, k in zip(groups, keep) if k]
            dropped += sum(not k for k in keep)
            # groups the shaped reward alone would have kept: all right or all wrong, differing in length
            dropped_reward_mixed += sum(m and not k for k, m in zip(keep, reward_mixed))
            dropped_acc_mixed += sum(m and not k for k, m in zip(keep, acc_mixed))  # 0 under filter_metric=acc
            missing = target - len(kept)
            pending = more_problems(missing) if missing > 0 and rounds < self.cfg.max_rounds else []
        stats = {
            "dapo/rounds": rounds,
            "dapo/kept_groups": min(len(kept), target),
            "dapo/target_groups": target,
            "dapo/dropped_groups": dropped,
            "dapo/dropped_reward_mixed": dropped_reward_mixed,
            "dapo/dropped_acc_mixed": dropped_acc_mixed,
        }
        if len(kept) < target:
            log.warning("dynamic sampling: %d of %d mixed groups after %d rounds", len(kept), target, rounds)
        return Batch(kept[:target], stats=stats)

    def _collect_adaptive(self, problems: list[Problem], seed: int) -> Batch:
        cfg = self.cfg
        texts = [p.question for p in problems]
        # A dead value server gives the uninformed prior for this step while its replacement loads.
        uninformed = ([0.5] * len(texts), [0.5] * len(texts))
        prior_list, unc_list = self._timed("value", lambda: self.value_server.call_or(uninformed, "predict", texts))
        prior = torch.tensor(prior_list, dtype=torch.float64).clamp(v05.PRIOR_MIN, v05.PRIOR_MAX)
        unc = torch.tensor(unc_list, dtype=torch.float64)
        groups = self._sample_and_score(problems, [cfg.n] * len(problems), seed * 100)
        budget_left = int(round((cfg.budget_factor - 1.0) * cfg.n * len(problems)))
        bought = torch.zeros(len(problems), dtype=torch.long)
        for round_ in range(cfg.adaptive_rounds):
            if budget_left < cfg.delta:
                break
            k, n = _successes_and_counts(groups)
            extra = self.v05.allocate(prior, k, n, budget_left, uncertainty=unc)
            if int(extra.sum()) == 0:
                break
            more = self._sample_and_score(problems, extra.tolist(), seed * 100 + 1 + round_)
            for g, m in zip(groups, more):
                g.trajectories += m.trajectories
            bought += extra
            budget_left -= int(extra.sum())
        k, n = _successes_and_counts(groups)
        b, diag = self.v05.fuse(prior, k, n, uncertainty=unc)
        decisions = []
        for i, g in enumerate(groups):
            g.baseline = float(b[i])
            decisions.append(
                dict(
                    uid=g.problem.uid,
                    prior=float(prior[i]),
                    uncertainty=float(unc[i]),
                    k=int(k[i]),
                    n=int(n[i]),
                    z2=float(diag["z2"][i]),
                    lam=float(diag["lam"][i]),
                    baseline=float(b[i]),
                    decision=("accepted", "shrunk", "rejected")[int(diag["decision"][i])],
                    extra=int(bought[i]),
                )
            )
        self._timed("value", lambda: self.value_server.call("add_context", texts, (k / n).tolist()))
        self._timed("value", self.value_server.snapshot)  # what a replacement would be restored to
        p_hat = k / n
        stats = {
            "v05/accepted": sum(d["decision"] == "accepted" for d in decisions),
            "v05/shrunk": sum(d["decision"] == "shrunk" for d in decisions),
            "v05/rejected": sum(d["decision"] == "rejected" for d in decisions),
            "v05/extra_mean": float(bought.float().mean()),
            "v05/prior_brier": float(((prior - p_hat) ** 2).mean()),
            "v05/prior_corr": _corr(prior, p_hat),
            "v05/prior_err_sd": float(diag["prior_err_sd"]),
            "v05/invalid_rate": float(diag["invalid_rate"]),
            "v05/window": len(self.v05),
        }
        return Batch(groups, decisions=decisions, stats=stats)


def _successes_and_counts(groups: list[PromptGroup]) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.tensor([sum(g.correct) for g in groups], dtype=torch.float64)
    n = torch.tensor([len(g.correct) for g in groups], dtype=torch.float64)
    return k, n


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    if len(x) < 2 or float(x.std()) == 0 or float(y.std()) == 0:
        return float("nan")
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])
