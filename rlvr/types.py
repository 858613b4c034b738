"""The records that cross role boundaries, in the order a step makes them.

    Problem            a prompt and its gold answer (`rlvr.data` loads them)
    GenerationRequest  sample `n` completions of one prompt: text, or token ids (a multi-turn episode)
    Sample             one completion as the rollout pool returns it: token ids and the engine's
                       log-probs as tensors, and the weight version that sampled it
    Trajectory         one sampled response as the learners train on it: its tokens, loss mask,
                       the engine's log-probs μ, its weight version, reward and (once computed) advantage
    PromptGroup        one prompt's trajectories, plus per-prompt data (V0.5's baseline)
    Batch              one step's groups, with a flat view (rewards, group ids, advantages, in one
                       order by construction)
    MiniBatch          one optimizer step's share of a learner rank (`rlvr.learner.plan` cuts them),
                       with the mini-batch's global token and sequence counts for loss scaling

Token data is held as 1-D tensors (ids `int64`, log-probs and masks `float32`) from the rollout
pool to the learner's collate: token ids go into and come out of the engines, so nothing is
re-tokenized between the engine and the loss. The constructors accept lists as well and convert them.
Advantages are written onto the trajectories (`Batch.set_advantages`), so nothing downstream
re-zips a flat tensor with a list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

TokenIds = torch.Tensor  # 1-D int64
TokenFloats = torch.Tensor  # 1-D float32, one per response token


def token_ids(ids: Sequence[int] | torch.Tensor) -> TokenIds:
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def token_floats(values: Sequence[float] | torch.Tensor) -> TokenFloats:
    return torch.as_tensor(values, dtype=torch.float32).reshape(-1)


@dataclass(frozen=True)
class Problem:
    uid: str  # stable id, e.g. "chain_sum/0/17" or "file:gsm8k.jsonl:42"
    question: str  # the question text shown to the model (no chat template applied)
    answer: str  # gold answer as a string
    answer_type: str = "number"  # number | expression | choice | string | any
    # chat turns before the question, as (role, content) pairs, from a chat-format prompt
    context: tuple[tuple[str, str], ...] = ()
    # the row's other fields (verl: data_source, extra_info; trl: its columns), for reward functions
    meta: Mapping | None = field(default=None, compare=False, repr=False)
    # the row's prompt was chat messages: trl-style rewards get it and the completion as messages, as TRL gives them
    chat: bool = field(default=False, compare=False, repr=False)

    @property
    def family(self) -> str:
        """The task family a problem came from: its reasoning-gym task label, else its source file."""
        if self.uid.count("/") >= 2:
            return self.uid.rsplit("/", 2)[0]
        return self.uid.rsplit(":", 1)[0]


@dataclass
class GenerationRequest:
    """Sample `n` completions of one prompt: text with the chat template applied, or token ids
    (a multi-turn episode continues from its ids, never from re-tokenized text)."""

    prompt_index: int
    prompt: str | list[int]
    n: int
    max_tokens: int | None = None  # this request's cap, below `SamplingConfig.max_tokens` (a turn of an episode)


@dataclass(eq=False)  # tensors have no truth value: two samples are equal only when they are one
class Sample:
    prompt_index: int
    prompt_ids: TokenIds
    response_ids: TokenIds
    text: str
    logprobs: TokenFloats  # log-prob of each sampled token under the engine's weights
    finish_reason: str  # "stop" or "length"
    truncated: bool  # hit max_tokens before an end-of-sequence token
    weight_version: int

    def __post_init__(self) -> None:
        self.prompt_ids, self.response_ids = token_ids(self.prompt_ids), token_ids(self.response_ids)
        self.logprobs = token_floats(self.logprobs)


@dataclass(eq=False)
class Trajectory:
    prompt_ids: TokenIds
    response_ids: TokenIds
    rollout_logprobs: TokenFloats = field(default_factory=lambda: token_floats([]))  # μ: the engine's log-prob of each token; empty: none
    loss_mask: TokenFloats | None = None  # 1 = trained on; None means every token
    weight_version: int = 0
    reward: float = 0.0
    correct: bool = False
    error: str | None = None
    group: int = 0  # index of its PromptGroup in the batch
    truncated: bool = False
    text: str = ""
    advantage: float = 0.0

    def __post_init__(self) -> None:
        self.prompt_ids, self.response_ids = token_ids(self.prompt_ids), token_ids(self.response_ids)
        self.rollout_logprobs = token_floats(self.rollout_logprobs)
        self.loss_mask = torch.ones(len(self.response_ids)) if self.loss_mask is None else token_floats(self.loss_mask)
        if len(self.loss_mask) != len(self.response_ids):
            raise ValueError(f"loss_mask has {len(self.loss_mask)} entries for {len(self.response_ids)} response tokens")
        if len(self.rollout_logprobs) not in (0, len(self.response_ids)):
            raise ValueError(f"{len(self.rollout_logprobs)} rollout log-probs for {len(self.response_ids)} response tokens")

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def prompt_key(self) -> tuple[int, ...]:
        """The prompt's ids as a hashable, ordered key: which trajectories share a prompt."""
        return tuple(self.prompt_ids.tolist())

    def for_learner(self) -> Trajectory:
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
    tokens: int  # loss-masked tokens
    sequences: int  # sequences with at least one loss-masked token


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
