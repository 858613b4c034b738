"""Advantage modifiers that compose with any estimator: focal (F-GRPO) and HA-DW.

Every modifier has the signature ``fn(adv, rewards, group_ids, **kwargs) -> adv'`` where
``adv`` is float[N] per rollout (or float[N, ...], scaled along the first dim), ``rewards``
float[N] and ``group_ids`` long[N]. Select one by name with :func:`apply_weighting`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import torch

from ._registry import lookup, register
from .advantages import group_stats

Weighting = Callable[..., torch.Tensor]
WEIGHTINGS: dict[str, Weighting] = {}


def _scale_rows(adv: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply each rollout's advantage (first dim) by its scale, broadcasting over tokens."""
    if adv.shape[0] != scale.shape[0]:
        raise ValueError(f"adv has {adv.shape[0]} rollouts but rewards has {scale.shape[0]}")
    return adv * scale.to(adv.dtype).view(-1, *([1] * (adv.ndim - 1)))


@register(WEIGHTINGS, "none")
def no_weighting(adv: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Identity: A_i ← A_i."""
    return adv


@register(WEIGHTINGS, "focal")
def focal_weighting(
    adv: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor, gamma: float = 0.5
) -> torch.Tensor:
    """Focal difficulty scaling (F-GRPO): A_i ← (1 − p̂)^γ · A_i, one scalar per prompt.

    Prompts the policy already solves (p̂ → 1) are down-weighted so rare correct modes
    on hard prompts keep their share of the gradient. γ = 0 is the identity.
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    _, p_hat, _ = group_stats(rewards, group_ids)
    # Rewards outside [0, 1] would make the base negative; the weight is defined on success rates.
    return _scale_rows(adv, (1 - p_hat).clamp(min=0) ** gamma)


class HADWState:
    """HA-DW's difficulty anchor: the last ``window`` batch-mean rewards.

    It is training state (checkpoint it with :meth:`state_dict`).
    """

    def __init__(self, window: int = 10) -> None:
        if window < 1:
            raise ValueError(f"HA-DW window must be >= 1, got {window}")
        self.window = window
        self.history: deque[float] = deque(maxlen=window)

    def push(self, batch_mean_reward: float) -> None:
        self.history.append(float(batch_mean_reward))

    def anchor(self) -> float:
        """C = mean of the stored batch-mean rewards."""
        if not self.history:
            raise ValueError("HA-DW anchor requested before any batch was pushed")
        return sum(self.history) / len(self.history)

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = int(state["window"])
        self.history = deque((float(x) for x in state["history"]), maxlen=self.window)

    def __repr__(self) -> str:
        return f"HADWState(window={self.window}, history={list(self.history)})"


@register(WEIGHTINGS, "hadw")
def hadw_weighting(
    adv: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    state: HADWState,
    lam: float = 1.5,
    update_state: bool = True,
) -> torch.Tensor:
    """History-aware difficulty weighting (HA-DW).

    - Anchor: C = mean of the last k batch-mean rewards (``state``). With ``update_state``
      the current batch's mean reward enters the history first (the one side effect).
    - Direction: D_i = −sgn(p̂ − C)·sgn(r_i − p̂).
    - Scale: A_i ← λ·exp(D_i·|p̂ − C|)·A_i, λ = 1.5.

    On a prompt harder than the anchor (p̂ < C) correct rollouts are amplified and wrong
    ones damped; on an easier one (p̂ > C) the reverse. This counters the bias of
    group-relative advantages toward the group's own difficulty.
    """
    rewards_f = rewards if rewards.is_floating_point() else rewards.float()
    if update_state:
        state.push(rewards_f.mean().item())
    anchor = state.anchor()
    _, p_hat, _ = group_stats(rewards_f, group_ids)
    direction = -torch.sign(p_hat - anchor) * torch.sign(rewards_f - p_hat)
    return _scale_rows(adv, lam * torch.exp(direction * (p_hat - anchor).abs()))


def apply_weighting(
    name: str, adv: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor, **kwargs
) -> torch.Tensor:
    """Apply the modifier registered as ``name`` (see ``WEIGHTINGS``) to the advantages."""
    return lookup(WEIGHTINGS, name, "advantage weighting")(adv, rewards, group_ids, **kwargs)
