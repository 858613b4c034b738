"""Advantage modifiers that compose with any estimator: focal (F-GRPO) and HA-DW.

Every modifier has the signature ``fn(adv, success, group_ids, **kwargs) -> adv'`` where
``adv`` is float[N] per rollout (or float[N, ...], scaled along the first dim), ``success``
float[N] each rollout's correctness (0/1) and ``group_ids`` long[N]. Select one by name with
:func:`apply_weighting`.

Both papers define their weights on success rates. The trainer passes correctness, never the
shaped reward: under DAPO's overlong penalty a shaped group mean can be negative, which would
give focal a weight above 1 and move HA-DW's anchor with answer lengths. With 0/1 rewards the
two are the same. (HA-DW's released code reads its ±1 reward, whose group mean is 2p̂ − 1, so
its exponent |p̂ − C| is twice ours at equal success rates; docs/algorithms.md.)
"""

from __future__ import annotations

import statistics
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
        raise ValueError(f"adv has {adv.shape[0]} rollouts but success has {scale.shape[0]}")
    return adv * scale.to(adv.dtype).view(-1, *([1] * (adv.ndim - 1)))


@register(WEIGHTINGS, "none")
def no_weighting(adv: torch.Tensor, success: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Identity: A_i ← A_i."""
    return adv


@register(WEIGHTINGS, "focal")
def focal_weighting(
    adv: torch.Tensor, success: torch.Tensor, group_ids: torch.Tensor, gamma: float = 0.5
) -> torch.Tensor:
    """Focal difficulty scaling (F-GRPO): A_i ← (1 − p̂)^γ · A_i, one scalar per prompt,
    p̂ the group's success rate (mean correctness), so the weight lies in [0, 1].

    Prompts the policy already solves (p̂ → 1) are down-weighted so rare correct modes
    on hard prompts keep their share of the gradient. γ = 0 is the identity.
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    _, p_hat, _ = group_stats(success, group_ids)
    # Success rates lie in [0, 1]; the clamp only guards a caller that passes something else.
    return _scale_rows(adv, (1 - p_hat).clamp(0, 1) ** gamma)


class HADWState:
    """HA-DW's difficulty anchor C, carried across batches (checkpoint it with :meth:`state_dict`).

    ``anchor="window"`` (the authors' released code, and the default): C = the mean of the last
    ``window`` batch-mean success rates, the current batch's included.

    ``anchor="ema"`` (an option; it appears only in a closed TRL pull request's summary):
        C⁺ = (1 − η_t)·C⁻ + η_t·y_t,   η_t = η·σ_t
    with y_t the current batch's success rate, σ_t the standard
    deviation of the last ``window`` batch-mean success rates (the "training stability" the update adapts
    to) and C⁻ the anchor before this batch, which is what the weight uses. The first batch starts
    the anchor at y_1. Our reading of y_t and σ_t: see docs/algorithms.md.
    """

    ANCHORS = ("window", "ema")

    def __init__(self, window: int = 10, anchor: str = "window", eta: float = 0.1) -> None:
        if window < 1:
            raise ValueError(f"HA-DW window must be >= 1, got {window}")
        if anchor not in self.ANCHORS:
            raise ValueError(f"unknown HA-DW anchor {anchor!r}; known: {', '.join(self.ANCHORS)}")
        if not 0 <= eta <= 1:
            raise ValueError(f"HA-DW eta must lie in [0, 1], got {eta}")
        self.window, self.mode, self.eta = window, anchor, float(eta)
        self.history: deque[float] = deque(maxlen=window)
        self.belief: float | None = None  # C, for anchor="ema"

    def observe(self, batch_success_rate: float) -> float:
        """Take in this batch's success rate and return the anchor its weights use."""
        y = float(batch_success_rate)
        self.history.append(y)
        if self.mode == "window":
            return self.anchor()
        before = y if self.belief is None else self.belief
        sigma = statistics.pstdev(self.history) if len(self.history) > 1 else 0.0
        eta_t = min(1.0, self.eta * sigma)
        self.belief = (1 - eta_t) * before + eta_t * y
        return before

    def push(self, batch_success_rate: float) -> None:
        self.observe(batch_success_rate)

    def anchor(self) -> float:
        """The current anchor: the window mean, or the EMA belief C."""
        if not self.history:
            raise ValueError("HA-DW anchor requested before any batch was pushed")
        if self.mode == "ema":
            return float(self.belief)
        return sum(self.history) / len(self.history)

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "history": list(self.history), "anchor": self.mode, "eta": self.eta, "belief": self.belief}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The checkpoint's history and belief under this state's own settings (the run's config):
        the saved window, anchor and eta overrode a resumed run's config, which its config.yaml
        then misreported. The history keeps its last ``window`` rates, as V0.5's window does."""
        self.history = deque((float(x) for x in state["history"]), maxlen=self.window)
        self.belief = state.get("belief") if state.get("anchor", "window") == self.mode else None

    def __repr__(self) -> str:
        return f"HADWState(anchor={self.mode!r}, window={self.window}, eta={self.eta}, history={list(self.history)}, belief={self.belief})"


@register(WEIGHTINGS, "hadw")
def hadw_weighting(
    adv: torch.Tensor,
    success: torch.Tensor,
    group_ids: torch.Tensor,
    state: HADWState,
    lam: float = 1.5,
    update_state: bool = True,
) -> torch.Tensor:
    """History-aware difficulty weighting (HA-DW).

    - Anchor: C from ``state`` (:class:`HADWState`: the mean of the last k batch success
      rates, as the authors' code, or the EMA belief C⁻). With ``update_state`` the current
      batch's success rate enters the state first (the one side effect).
    - Direction: D_i = −sgn(p̂ − C)·sgn(s_i − p̂), s_i the rollout's correctness, p̂ its group's
      success rate.
    - Scale: A_i ← λ·exp(D_i·|p̂ − C|)·A_i, λ = 1.5.

    On a prompt harder than the anchor (p̂ < C) correct rollouts are amplified and wrong
    ones damped; on an easier one (p̂ > C) the reverse. This counters the bias of
    group-relative advantages toward the group's own difficulty.
    """
    success_f = success if success.is_floating_point() else success.float()
    if success_f.numel() == 0:
        return adv  # nothing to weigh, and an empty batch's mean must not enter the anchor
    anchor = state.observe(success_f.mean().item()) if update_state else state.anchor()
    _, p_hat, _ = group_stats(success_f, group_ids)
    direction = -torch.sign(p_hat - anchor) * torch.sign(success_f - p_hat)
    return _scale_rows(adv, lam * torch.exp(direction * (p_hat - anchor).abs()))


def apply_weighting(
    name: str, adv: torch.Tensor, success: torch.Tensor, group_ids: torch.Tensor, **kwargs
) -> torch.Tensor:
    """Apply the modifier registered as ``name`` (see ``WEIGHTINGS``) to the advantages;
    ``success`` is each rollout's correctness (0/1), not its shaped reward."""
    return lookup(WEIGHTINGS, name, "advantage weighting")(adv, success, group_ids, **kwargs)
