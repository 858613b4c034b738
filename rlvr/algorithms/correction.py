"""Rollout-policy correction: the engine that sampled (μ) is not the learner's π_old.

vLLM's kernels, dtypes and caches give log-probs that differ from the learner's, and an async
run samples with weights up to `max_staleness` versions old. These functions reweight or drop
tokens so the update stays an estimate under π_old.

Shapes: ``old_logp``, ``rollout_logp`` and ``mask`` are float[B, T]. Each correction returns
``(token_weights, mask, flagged)``: weights that multiply the per-token loss (detached), the mask
with dropped sequences zeroed, and a bool[B, T] of the tokens it truncated or dropped.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._registry import lookup, register
from .losses import MAX_LOG_RATIO, zero_masked

CorrectionFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
CORRECTIONS: dict[str, CorrectionFn] = {}


def _log_ratio(old_logp: torch.Tensor, rollout_logp: torch.Tensor) -> torch.Tensor:
    return (old_logp - rollout_logp).detach().clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


@register(CORRECTIONS, "none")
def no_correction(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, threshold: float = 2.0):
    """w = 1: trust μ = π_old."""
    return torch.ones_like(old_logp), mask, torch.zeros_like(mask, dtype=torch.bool)


@register(CORRECTIONS, "tis")
def truncated_importance_sampling(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, threshold: float = 2.0):
    """Token-level truncated IS (TIS): w_t = min(π_old(y_t)/μ(y_t), C), C = ``threshold``.

    `flagged` marks the tokens whose ratio exceeded C (their weight was truncated).
    """
    ratio = torch.exp(_log_ratio(old_logp, rollout_logp))
    return ratio.clamp(max=threshold), mask, (ratio > threshold) & (mask > 0)


@register(CORRECTIONS, "mask")
def geometric_sequence_mask(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, threshold: float = 2.0):
    """Sequence masking: drop sequence b when its geometric-mean ratio
    g_b = exp(Σ_t m·log(π_old/μ) / Σ_t m) leaves [1/C', C'], C' = ``threshold``; w = 1 otherwise.
    """
    log_ratio = _log_ratio(old_logp, rollout_logp)
    tokens = mask.sum(-1).clamp(min=1)
    log_g = (log_ratio * mask).sum(-1) / tokens
    keep = (log_g.abs() <= torch.log(torch.tensor(float(threshold)))).to(mask.dtype)[:, None]
    return torch.ones_like(old_logp), mask * keep, (keep == 0) & (mask > 0)


def rollout_correction(
    mode: str, old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, threshold: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The correction named ``mode`` (none, tis, mask): ``(token_weights, mask, flagged)``."""
    if threshold <= 1.0:
        raise ValueError(f"rollout correction threshold must be > 1, got {threshold}")
    old_logp, rollout_logp = zero_masked(old_logp, mask), zero_masked(rollout_logp, mask)
    return lookup(CORRECTIONS, mode, "rollout correction")(old_logp, rollout_logp, mask, threshold=threshold)


def rollout_mismatch(old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """How far μ is from π_old on the sampled tokens, as sums over the masked tokens (divide by the
    token count to get means): ``abs_diff`` Σ|log π_old − log μ| and ``kl`` Σ k3, where
    k3 = r − log r − 1 with r = π_old/μ is an unbiased, non-negative estimate of KL(μ‖π_old)
    under samples from μ."""
    log_r = _log_ratio(zero_masked(old_logp, mask), zero_masked(rollout_logp, mask))
    return {"abs_diff": (log_r.abs() * mask).sum(), "kl": ((torch.exp(log_r) - log_r - 1) * mask).sum()}
