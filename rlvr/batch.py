"""The typed batch that flows from the BudgetController to the learners.

    Trajectory   one sampled response: its tokens, loss mask, the engine's log-probs μ, the weight
                 version it was sampled with, its reward, and (once computed) its advantage
    PromptGroup  one prompt's trajectories, plus per-prompt data (V0.5's baseline and decision)
    Batch        one step's groups, with a flat view (rewards, group ids, advantages, in one
                 order by construction) and the mini-batch plan the learners receive

Advantages are written onto the trajectories (`Batch.set_advantages`), so nothing downstream
re-zips a flat tensor with a list.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from rlvr.data import Problem


@dataclass
class Trajectory:
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float] = field(default_factory=list)  # μ: the engine's log-prob of each token
    loss_mask: list[float] = field(default_factory=list)  # 1 = trained on; empty means every token
    weight_version: int = 0
    reward: float = 0.0
    correct: bool = False
    error: str | None = None
    group: int = 0  # index of its PromptGroup in the batch
    truncated: bool = False
    text: str = ""
    advantage: float = 0.0

    def __post_init__(self) -> None:
        if not self.loss_mask:
            self.loss_mask = [1.0] * len(self.response_ids)
        if len(self.loss_mask) != len(self.response_ids):
            raise ValueError(f"loss_mask has {len(self.loss_mask)} entries for {len(self.response_ids)} response tokens")

    @property
    def num_tokens(self) -> int:
        return int(sum(self.loss_mask))

    def for_learner(self) -> "Trajectory":
        """The fields a learner needs (no text): what travels to the learner actors."""
        return Trajectory(
            self.prompt_ids, self.response_ids, self.rollout_logprobs, self.loss_mask, self.weight_version, advantage=self.advantage
        )


@dataclass
class PromptGroup:
    problem: Problem
    trajectories: list[Trajectory] = field(default_factory=list)
    baseline: float | None = None  # V0.5's fused baseline b(x)

    @property
    def rewards(self) -> list[float]:
        return [t.reward for t in self.trajectories]

    @property
    def correct(self) -> list[bool]:
        return [t.correct for t in self.trajectories]

    @property
    def success_rate(self) -> float:
        return sum(self.correct) / max(1, len(self.trajectories))


@dataclass
class MiniBatch:
    """One optimizer step's share of a learner rank: its micro-batches, and the global counts of the
    mini-batch (all ranks), so each micro-batch's loss is its share of the mini-batch's loss."""

    micro_batches: list[list[Trajectory]]
    tokens: int
    sequences: int


@dataclass
class Batch:
    groups: list[PromptGroup]
    decisions: list[dict] = field(default_factory=list)  # V0.5, one per prompt
    stats: dict = field(default_factory=dict)
    stream_state: dict | None = None  # the prompt stream right after this batch was drawn
    value_state: dict | None = None  # the value server right after this batch (async runs)
    controller_state: dict | None = None  # the BudgetController right after this batch
    oracle: dict | None = None  # rlvr.train.oracle.sample_oracle's answer for this batch's prompts, when measured
    advantage_weights: torch.Tensor | None = None  # the weighting's factor per trajectory (focal, HA-DW), when one is on
    unweighted_advantages: torch.Tensor | None = None  # the estimator's advantages before that weighting

    def __post_init__(self) -> None:
        for i, g in enumerate(self.groups):
            for t in g.trajectories:
                t.group = i

    # -- flat view ------------------------------------------------------------------------------
    @property
    def trajectories(self) -> list[Trajectory]:
        return [t for g in self.groups for t in g.trajectories]

    def for_learners(self, version: int, max_staleness: int, mask_truncated: bool,
                     advantages: list[float] | None = None) -> tuple[list[Trajectory], dict]:
        """The trajectories the learners train on: none sampled with weights older than
        `version - max_staleness`, and no truncated one when `mask_truncated`. Stale ones still
        counted in their group's baseline (their rewards are real); they only leave the loss.
        ``advantages`` (one per trajectory of the batch) replace the batch's in the copies."""
        keep, stale = [], 0
        for i, t in enumerate(self.trajectories):
            if t.weight_version < version - max_staleness:
                stale += 1
            elif not (mask_truncated and t.truncated):
                keep.append(t.for_learner() if advantages is None else replace(t.for_learner(), advantage=advantages[i]))
        lags = [version - t.weight_version for t in keep]
        return keep, {"async/stale_dropped": stale, "async/staleness_max": max(lags, default=0)}

    def rewards(self) -> torch.Tensor:
        return torch.tensor([t.reward for t in self.trajectories], dtype=torch.float32)

    def correctness(self) -> torch.Tensor:
        """Each trajectory's correctness as 0/1 floats: what a success rate is a mean of."""
        return torch.tensor([float(t.correct) for t in self.trajectories], dtype=torch.float32)

    def group_ids(self) -> torch.Tensor:
        return torch.tensor([t.group for t in self.trajectories], dtype=torch.long)

    def baselines(self) -> torch.Tensor:
        return torch.tensor([g.baseline for g in self.groups], dtype=torch.float32)

    def advantages(self) -> torch.Tensor:
        return torch.tensor([t.advantage for t in self.trajectories], dtype=torch.float32)

    def set_advantages(self, adv: torch.Tensor) -> None:
        trajectories = self.trajectories
        if adv.shape != (len(trajectories),):
            raise ValueError(f"{tuple(adv.shape)} advantages for {len(trajectories)} trajectories")
        for t, a in zip(trajectories, adv.tolist()):
            t.advantage = a

    def versions(self) -> list[int]:
        return [t.weight_version for t in self.trajectories]


def plan_mini_batches(
    trajectories: list[Trajectory], mini_batches: int, num_ranks: int,
    micro_batch: int | Callable[[list[Trajectory]], list[list[Trajectory]]], seed: int,
) -> list[list[MiniBatch]]:
    """Trajectories -> per rank, `mini_batches` MiniBatches (one optimizer step each).

    The split into mini-batches is a seeded shuffle (each optimizer step sees a mix of prompts);
    within one, a prompt's responses stay together (the learner runs a shared prompt once) and
    similar lengths share a micro-batch (less padding), interleaved over the ranks. A rank's share
    is cut into micro-batches of `micro_batch` sequences, or by `micro_batch(share)` (`rlvr.runtime.sizing.
    ActivationBudget`: by memory). Every rank gets equally many micro-batches (ZeRO-3 gathers in
    lockstep): a rank with fewer ends with empty ones.
    """
    cut = micro_batch if callable(micro_batch) else lambda shard: [shard[j : j + micro_batch] for j in range(0, len(shard), micro_batch)]
    order = list(trajectories)
    random.Random(seed).shuffle(order)
    m = max(1, min(mini_batches, len(order)))
    bounds = [i * len(order) // m for i in range(m + 1)]  # sizes differ by at most one
    per_rank: list[list[MiniBatch]] = [[] for _ in range(num_ranks)]
    for i in range(m):
        part = sorted(order[bounds[i] : bounds[i + 1]], key=lambda t: (len(t.prompt_ids), t.prompt_ids, len(t.response_ids)))
        shards = [cut(part[r::num_ranks]) for r in range(num_ranks)]
        n_micro = max(1, max(len(s) for s in shards))
        tokens, sequences = max(1, sum(t.num_tokens for t in part)), max(1, len(part))
        for r, micro in enumerate(shards):
            per_rank[r].append(MiniBatch(micro + [[] for _ in range(n_micro - len(micro))], tokens, sequences))
    return per_rank
