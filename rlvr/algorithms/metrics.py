"""Evaluation metrics."""

from __future__ import annotations

import torch


def pass_at_k(
    n: int | torch.Tensor, c: int | torch.Tensor, k: int | torch.Tensor
) -> float | torch.Tensor:
    """Unbiased pass@k from n samples with c correct: 1 − C(n−c, k) / C(n, k).

    Computed as 1 − exp(log Γ-ratio) in float64, so large n neither overflows nor loses
    precision; it is 1 when n − c < k and exactly 0 when c = 0. Python numbers in, float out; tensors broadcast.
    """
    is_scalar = not any(isinstance(x, torch.Tensor) for x in (n, c, k))
    n_t, c_t, k_t = (torch.as_tensor(x, dtype=torch.float64) for x in (n, c, k))
    if bool((c_t < 0).any() | (c_t > n_t).any() | (k_t < 1).any() | (k_t > n_t).any()):
        raise ValueError("pass_at_k needs 0 <= c <= n and 1 <= k <= n")
    fail = n_t - c_t
    # log C(n−c, k) − log C(n, k) = lgamma(n−c+1) − lgamma(n−c−k+1) − lgamma(n+1) + lgamma(n−k+1)
    safe_rest = (fail - k_t).clamp(min=0)
    log_ratio = (
        torch.lgamma(fail + 1) - torch.lgamma(safe_rest + 1) - torch.lgamma(n_t + 1) + torch.lgamma(n_t - k_t + 1)
    )
    value = torch.where(fail < k_t, torch.ones_like(log_ratio), -torch.expm1(log_ratio))
    # lgamma rounding leaves ~1e-16 where the answer is exactly 0 (no correct sample)
    value = torch.where(c_t == 0, torch.zeros_like(value), value)
    return float(value) if is_scalar else value
