"""Policy losses, loss aggregation and KL penalties.

Shapes: ``logp``, ``old_logp``, ``ref_logp`` and ``mask`` are float[B, T] (B sequences,
T tokens; ``mask`` is 1 on response tokens). ``adv`` is float[B] (one advantage per
sequence, broadcast to its tokens) or float[B, T]. ρ_t = π_θ/π_old = exp(logp − old_logp).

A policy loss has the signature ``fn(logp, old_logp, adv, mask, **kwargs) -> (per_token_loss,
clipped, ratio)``: ``clipped`` is a bool[B, T] marking tokens the loss clipped and ``ratio`` the
importance ratio it clipped on (per token, or a sequence's ratio on each of its tokens), both
for stats. ``mask`` is there for sequence-level losses (GSPO); token-level ones ignore it.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._registry import lookup, register

PolicyLossFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}
AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {}
KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}

# Bound on |log ρ| before exponentiating: beyond it ρ overflows and the token is an outlier anyway.
MAX_LOG_RATIO = 20.0


def zero_masked(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0 at masked positions, which may hold anything (-inf under top-p, NaN): 0 * NaN is NaN and
    -inf - -inf too; `where` also keeps their gradient 0."""
    return torch.where(mask > 0, logp, torch.zeros_like(logp))


def _log_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    return (logp - old_logp.detach()).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


@register(POLICY_LOSSES, "ppo_clip")
def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO-clip: L_t = −min(ρ_t·A, clip(ρ_t, 1−ε_low, 1+ε_high)·A).

    GRPO uses ε_low = ε_high = 0.2; DAPO's "clip-higher" uses 0.2 / 0.28. A token whose
    ratio left the trust region on the side its advantage pushes (A > 0 and ρ > 1+ε_high,
    or A < 0 and ρ < 1−ε_low) takes the constant branch and gets no gradient.

    Dual-clip (``clip_ratio_c`` = c > 1, verl's ``clip_ratio_c``): for A < 0 the loss is
    further bounded, L_t = min(−c·A, L_t), so a token with a huge ratio and a negative
    advantage cannot dominate the update. verl's default is c = 3; DAPO's recipe sets 10.
    """
    ratio = torch.exp(_log_ratio(logp, old_logp))
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if clip_ratio_c is not None:
        if clip_ratio_c <= 1:
            raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
        dual = (adv < 0) & (-adv * clip_ratio_c < loss)
        loss = torch.where(dual, -adv * clip_ratio_c, loss)
        was_clipped = was_clipped | dual
    return loss, was_clipped, ratio.detach()


@register(POLICY_LOSSES, "cispo")
def cispo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CISPO: L_t = −sg(clip(ρ_t, 0, 1+ε_high))·A·log π_θ(token).

    The importance weight is clipped and detached instead of the update, so every token
    keeps its gradient −sg(clip(ρ))·A·∇log π (no token is dropped, unlike PPO-clip).
    There is no lower bound (MiniMax-M1 sets ε_low large and tunes only ε_high). The
    default ε_high = 0.2 is verl's CISPO example; ScaleRL's absolute cap 5 (ε_high = 4)
    never bound on this box (docs/algorithms.md).
    """
    if eps_high <= 0:
        raise ValueError(f"CISPO eps_high must be > 0 (the cap is 1 + eps_high), got {eps_high}")
    ratio = torch.exp(_log_ratio(logp, old_logp))
    weight = ratio.clamp(max=1 + eps_high).detach()
    return -weight * adv * logp, ratio > 1 + eps_high, ratio.detach()


@register(POLICY_LOSSES, "gspo")
def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GSPO-token (Qwen, arXiv 2507.18071): PPO-clip on the sequence's importance ratio.

    s_i = (π_θ(y_i|x) / π_old(y_i|x))^(1/|y_i|) = exp(mean_t log ρ_t), and on each token
    s_i,t = sg[s_i]·π_θ(y_t)/sg[π_θ(y_t)] (equal to s_i in value, ∇s_i,t = s_i·∇log π_θ(y_t)).
    L_t = −min(s_i,t·A, clip(s_i,t, 1−ε_low, 1+ε_high)·A): a whole sequence is clipped or not.
    With a per-sequence A and seq-mean-token-mean this is the gradient of GSPO's sequence
    objective mean_i min(s_i·A_i, clip(s_i)·A_i). The paper clips at 3e-4 / 4e-4 (a sequence
    ratio moves far less than a token's); log s_i is capped at 10 before exponentiating, as verl.
    """
    tokens = mask.sum(-1, keepdim=True).clamp(min=1)
    log_seq = (_log_ratio(logp, old_logp) * mask).sum(-1, keepdim=True) / tokens
    log_ratio = (logp - logp.detach() + log_seq.detach()).clamp(max=10.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped, ratio.detach()


@register(AGGREGATIONS, "token-mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """Σ_{b,t} m·L / Σ_{b,t} m: every token of the batch weighs the same (DAPO, CISPO)."""
    return (loss * mask).sum() / mask.sum().clamp(min=1)


@register(AGGREGATIONS, "seq-mean-token-mean")
def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, max_len: int | None = None
) -> torch.Tensor:
    """mean_b (Σ_t m·L / Σ_t m): each sequence weighs the same (GRPO).

    Sequences without any response token are left out of the mean.
    """
    tokens = mask.sum(-1)
    seq_loss = (loss * mask).sum(-1) / tokens.clamp(min=1)
    has_tokens = (tokens > 0).to(loss.dtype)
    return (seq_loss * has_tokens).sum() / has_tokens.sum().clamp(min=1)


@register(AGGREGATIONS, "seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, max_len: int | None = None
) -> torch.Tensor:
    """mean_b (Σ_t m·L) / L_max with a constant L_max (Dr.GRPO; default T).

    Dividing by a constant instead of each sequence's length removes the length bias of
    per-sequence normalisation. As in seq-mean-token-mean, sequences without any response token
    are left out of the mean (so the learners' micro-batch shares, counted the same way, add up).
    """
    norm = loss.shape[-1] if max_len is None else max_len
    if norm <= 0:
        raise ValueError(f"max_len must be positive, got {norm}")
    tokens = mask.sum(-1)
    return (loss * mask).sum() / ((tokens > 0).sum().clamp(min=1) * norm)


def aggregate(
    loss: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean", max_len: int | None = None
) -> torch.Tensor:
    """Reduce per-token terms float[B, T] to a scalar with the mode named ``agg``."""
    return lookup(AGGREGATIONS, agg, "loss aggregation")(loss, mask, max_len=max_len)


@register(KL_ESTIMATORS, "k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π − log π_ref (unbiased, high variance, can be negative)."""
    return logp - ref_logp


@register(KL_ESTIMATORS, "k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½·(log π − log π_ref)²."""
    return 0.5 * (logp - ref_logp) ** 2


@register(KL_ESTIMATORS, "k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = π_ref/π − log(π_ref/π) − 1 (unbiased, non-negative, low variance)."""
    log_ratio = (ref_logp - logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.exp(log_ratio) - log_ratio - 1


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate float[B, T] by ``estimator`` (k1, k2 or k3)."""
    return lookup(KL_ESTIMATORS, estimator, "KL estimator")(logp, ref_logp.detach())


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((x * mask).sum() / mask.sum().clamp(min=1)).detach()


def policy_loss(
    name: str,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    agg: str = "token-mean",
    *,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    max_len: int | None = None,
    token_weights: torch.Tensor | None = None,
    kept: torch.Tensor | None = None,
    **loss_kwargs: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scalar loss = agg(w·L_name) + β·agg(KL), and detached 0-dim stats.

    ``loss_kwargs`` go to the loss (``eps_low``/``eps_high`` for ppo_clip, ``eps_high``
    for cispo). ``max_len`` is the constant of ``seq-mean-token-sum-norm`` (default T).
    With ``ref_logp`` the KL is reported as ``kl``; it enters the loss when β = kl_coef > 0.
    ``token_weights`` float[B, T] (detached) multiply the per-token policy loss: the rollout
    correction's IS weights (`rlvr.algorithms.correction`); None means 1. ``kept`` float[B, T]
    (0/1): the tokens the `mask` correction keeps; a dropped token's KL is 0 as its policy loss is
    (both stay in the denominator), None keeps every token.
    Stats: ``pg_loss``, ``clip_frac`` (fraction of response tokens clipped), split into
    ``clip_frac_low`` and ``clip_frac_high`` by the side of 1 of the ratio the loss clipped on
    (GSPO: the sequence's), ``approx_kl`` (mean of old_logp − logp), the token ratio's
    ``ratio_mean``, ``ratio_min`` and ``ratio_max`` and ``ratio_dev`` (max |ρ − 1|) over the masked tokens, ``kl``, and ``clipped``: the bool[B, T] of
    tokens the loss clipped (not masked), for counts the caller makes on its own mask.
    """
    if logp.ndim != 2 or old_logp.shape != logp.shape or mask.shape != logp.shape:
        raise ValueError(
            f"logp, old_logp and mask must share a [B, T] shape, got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    if adv.shape == logp.shape[:1]:
        adv = adv.unsqueeze(-1)
    elif adv.shape != logp.shape:
        raise ValueError(f"adv must be [B] or [B, T] for logp {tuple(logp.shape)}, got {tuple(adv.shape)}")
    mask = mask.to(logp.dtype)
    adv = adv.detach().to(logp.dtype)
    logp, old_logp = zero_masked(logp, mask), zero_masked(old_logp, mask)
    if ref_logp is not None:
        ref_logp = zero_masked(ref_logp, mask)

    per_token, clipped, loss_ratio = lookup(POLICY_LOSSES, name, "policy loss")(logp, old_logp, adv, mask, **loss_kwargs)
    if token_weights is not None:
        per_token = per_token * token_weights.detach().to(logp.dtype)
    pg_loss = aggregate(per_token, mask, agg, max_len)
    loss = pg_loss

    log_ratio = _log_ratio(logp.detach(), old_logp)
    ratio = torch.exp(log_ratio)
    clipped = clipped.to(logp.dtype)
    on = mask > 0
    stats: dict[str, torch.Tensor] = {
        "pg_loss": pg_loss.detach(),
        "clip_frac": _masked_mean(clipped, mask),
        "clip_frac_low": _masked_mean(clipped * (loss_ratio < 1), mask),
        "clip_frac_high": _masked_mean(clipped * (loss_ratio > 1), mask),
        "approx_kl": _masked_mean(-log_ratio, mask),
        "ratio_mean": _masked_mean(ratio, mask),
        "ratio_min": ratio[on].min().detach() if on.any() else ratio.new_ones(()),
        "ratio_max": ratio[on].max().detach() if on.any() else ratio.new_ones(()),
        "ratio_dev": (ratio[on] - 1).abs().max().detach() if on.any() else ratio.new_zeros(()),
        "clipped": clipped > 0,
    }
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")
    if ref_logp is not None:
        per_token_kl = kl_penalty(logp, ref_logp, kl_estimator)
        if kept is not None:
            per_token_kl = per_token_kl * kept.detach().to(logp.dtype)
        kl = aggregate(per_token_kl, mask, agg, max_len)
        stats["kl"] = kl.detach()
        if kl_coef > 0:
            loss = loss + kl_coef * kl
    return loss, stats
