"""Advantage estimators: per-rollout advantages from rewards grouped by prompt.

Every estimator has the signature ``fn(rewards, group_ids, **kwargs) -> advantages``
with ``rewards`` float[N], ``group_ids`` long[N] (rollouts of one prompt share an id)
and the result float[N]. Select one by name with :func:`compute_advantages`.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._registry import lookup, register

Estimator = Callable[..., torch.Tensor]
ESTIMATORS: dict[str, Estimator] = {}

DEFAULT_EPS = 1e-6


def _as_float(rewards: torch.Tensor) -> torch.Tensor:
    return rewards if rewards.is_floating_point() else rewards.float()


def group_stats(
    rewards: torch.Tensor, group_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-rollout group size n, group mean p̂ and unbiased (Bessel) group std.

    Group ids may be any integers; they need not be contiguous. A group of one
    rollout has std 0 (there is no spread to measure).
    """
    if rewards.ndim != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"rewards and group_ids must both be 1-D of equal length, got "
            f"{tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    dtype = _as_float(rewards).dtype
    # sums in float64: a float32 sum of 16 copies of 0.7 is off by 1e-8, which GRPO's 1/(std + ε)
    # turned into A ≈ 0.1 for every rollout of a group whose rewards are all equal
    rewards = rewards.double()
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    counts = counts.double()
    sums = torch.zeros_like(counts).index_add_(0, inverse, rewards)
    means = sums / counts
    sq_dev = torch.zeros_like(counts).index_add_(0, inverse, (rewards - means[inverse]) ** 2)
    stds = (sq_dev / (counts - 1).clamp(min=1)).sqrt()
    return counts[inverse].to(dtype), means[inverse].to(dtype), stds[inverse].to(dtype)


@register(ESTIMATORS, "grpo")
def grpo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """GRPO: A_i = (r_i − p̂) / (std(r) + ε), std unbiased (Bessel), ε = 1e-6.

    A group whose rewards are all equal gets A = 0.
    """
    _, mean, std = group_stats(rewards, group_ids)
    return (_as_float(rewards) - mean) / (std + eps)


@register(ESTIMATORS, "drgrpo")
def drgrpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: A_i = r_i − p̂ (no division by the std, which biases toward easy/hard prompts)."""
    _, mean, _ = group_stats(rewards, group_ids)
    return _as_float(rewards) - mean


@register(ESTIMATORS, "rloo")
def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: A_i = r_i − mean_{j≠i} r_j = n/(n−1)·(r_i − p̂).

    A group of one rollout has no leave-one-out baseline and gets A = 0.
    """
    count, mean, _ = group_stats(rewards, group_ids)
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return scale * (_as_float(rewards) - mean)


@register(ESTIMATORS, "v05")
def v05_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    baselines: torch.Tensor,
    scale_by_std: bool = False,
    eps: float = DEFAULT_EPS,
    success_rates: torch.Tensor | None = None,
) -> torch.Tensor:
    """V0.5: A_i = r_i − b(x), b the fused baseline of the rollout's prompt.

    ``baselines`` is float[G] indexed by group id (ids must lie in [0, G)); it comes from
    :func:`rlvr.algorithms.v05.fuse`. With ``scale_by_std`` the advantage is divided by
    sqrt(p(1−p)) + ε, p = ``success_rates`` (float[G], the success-rate baseline; ``baselines``
    when not given). A baseline of a shaped reward may leave [0, 1] (partial credit, a penalty),
    where b(1−b) is no variance: p(1−p) of a success rate in [0, 1] always is. Unlike GRPO, a
    group whose rewards are all equal still carries signal whenever b ≠ p̂.
    """
    if group_ids.numel() and (group_ids.min() < 0 or group_ids.max() >= baselines.numel()):
        raise ValueError(
            f"group ids must index baselines (0..{baselines.numel() - 1}), got range "
            f"[{int(group_ids.min())}, {int(group_ids.max())}]"
        )
    rewards = _as_float(rewards)
    b = baselines.to(rewards.dtype)[group_ids]
    adv = rewards - b
    if scale_by_std:
        p = (baselines if success_rates is None else success_rates).to(rewards.dtype)[group_ids].clamp(0, 1)
        adv = adv / ((p * (1 - p)).sqrt() + eps)
    return adv


def compute_advantages(
    name: str, rewards: torch.Tensor, group_ids: torch.Tensor, **kwargs
) -> torch.Tensor:
    """Advantages float[N] by the estimator registered as ``name`` (see ``ESTIMATORS``)."""
    return lookup(ESTIMATORS, name, "advantage estimator")(rewards, group_ids, **kwargs)
