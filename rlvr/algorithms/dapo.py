"""DAPO parts: dynamic-sampling group filter, overlong reward shaping, truncation mask.

The loop that keeps generating until the batch is full of mixed groups (capped rounds)
belongs to the BudgetController; these are the pure pieces it and the learner call.
"""

from __future__ import annotations

import torch

# DAPO's soft-punishment cache as a share of the maximum response length: 4,096 of 20,480 tokens
# (arXiv 2503.14476 §3.4; verl recipe/dapo: overlong_buffer.len=4096, max_response_length=20480).
OVERLONG_BUFFER_FRACTION = 0.2


def default_overlong_buffer(max_len: int) -> int:
    """L_c for a maximum length L_max when none is given: DAPO's 20 % of L_max, at least 1 token."""
    return max(1, round(OVERLONG_BUFFER_FRACTION * max_len))


def dynamic_sampling_keep_mask(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """bool[G], indexed by group id (G = max id + 1): keep a group iff max(r) > min(r).

    A group whose values are all equal has zero group-relative advantage and no gradient,
    so DAPO drops it and samples again. Ids with no rollout are False. DAPO and verl
    (``filter_groups.metric=acc``) pass correctness here, not the shaped reward: a group that
    is all wrong but differs in length would otherwise be kept and trained on length alone.
    """
    if rewards.ndim != 1 or rewards.shape != group_ids.shape:
        raise ValueError("rewards and group_ids must both be 1-D of equal length")
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    if group_ids.min() < 0:
        raise ValueError("group ids must be non-negative")
    num_groups = int(group_ids.max()) + 1
    r = rewards.float()
    group_max = torch.full((num_groups,), -torch.inf, device=r.device).scatter_reduce(
        0, group_ids, r, reduce="amax"
    )
    group_min = torch.full((num_groups,), torch.inf, device=r.device).scatter_reduce(
        0, group_ids, r, reduce="amin"
    )
    return group_max > group_min


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int) -> torch.Tensor:
    """DAPO soft overlong punishment R_len(|y|), added to the task reward.

    R_len = 0                              if |y| ≤ L_max − L_c
          = ((L_max − L_c) − |y|) / L_c    if L_max − L_c < |y| ≤ L_max
          = −1                             if |y| > L_max
    with L_max = ``max_len`` and L_c = ``buffer``.
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"need 0 < buffer <= max_len, got buffer={buffer}, max_len={max_len}")
    lengths = lengths.float()
    soft_start = max_len - buffer
    ramp = (soft_start - lengths) / buffer
    penalty = torch.where(lengths <= soft_start, torch.zeros_like(lengths), ramp)
    return torch.where(lengths > max_len, -torch.ones_like(lengths), penalty)


def mask_truncated(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Zero the loss mask float[B, T] of sequences cut at the length limit (bool[B]).

    A truncated answer was never finished, so its reward says little about the policy.
    """
    return mask * (~truncated.bool()).to(mask.dtype).unsqueeze(-1)
