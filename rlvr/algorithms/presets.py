"""Named algorithm presets: ``algorithm=NAME`` in the config maps to one AlgorithmPreset.

A preset composes parts from the registries: advantage estimator, policy loss and its
clip range, loss aggregation, sampling strategy of the BudgetController, and KL.
The advantage weighting (``weighting=none|focal|hadw``) is orthogonal and not part of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import lookup
from .advantages import ESTIMATORS
from .correction import CORRECTIONS
from .losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES

SAMPLING_MODES = ("fixed", "dynamic_filter", "adaptive")
FILTER_METRICS = ("acc", "reward")  # what DAPO's dynamic sampling reads: correctness (DAPO, verl) or the shaped reward
OLD_LOGPROBS = ("recompute", "rollout")


@dataclass(frozen=True)
class AlgorithmPreset:
    """One RLVR algorithm as a composition of registered parts.

    ``eps_low`` is None for losses without a lower clip (CISPO). ``sampling``: ``fixed``
    (n rollouts per prompt), ``dynamic_filter`` (DAPO: drop all-equal groups, resample),
    ``adaptive`` (V0.5: test, fuse, OSLA allocation). ``overlong``: DAPO's soft length
    penalty; ``mask_truncated``: drop truncated samples from the loss. ``scale_by_std``:
    V0.5 only, divide A by sqrt(b(1−b)) + ε.

    ``mini_batches`` × ``epochs`` optimizer steps per rollout batch (the learner's
    ``learner.mini_batches`` / ``learner.epochs`` default to these). ``old_logprobs``: π_old from
    a no-grad forward before the first update (``recompute``) or the engine's μ (``rollout``).
    ``rollout_correction``: ``none``, ``tis`` or ``mask`` with ``correction_threshold`` C.
    ``clip_ratio_c``: PPO-clip's dual clip c > 1 for negative advantages (None: off).
    ``filter_metric``: what ``dynamic_filter`` requires to vary within a group, ``acc``
    (correctness, as DAPO and verl) or ``reward`` (the shaped reward).
    """

    name: str
    estimator: str
    loss: str
    agg: str
    eps_low: float | None = 0.2
    eps_high: float = 0.2
    sampling: str = "fixed"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    overlong: bool = False
    mask_truncated: bool = False
    scale_by_std: bool = False
    mini_batches: int = 1
    epochs: int = 1
    old_logprobs: str = "recompute"
    rollout_correction: str = "tis"
    correction_threshold: float = 2.0
    clip_ratio_c: float | None = None
    filter_metric: str = "acc"

    def __post_init__(self) -> None:
        lookup(ESTIMATORS, self.estimator, "advantage estimator")
        lookup(POLICY_LOSSES, self.loss, "policy loss")
        lookup(AGGREGATIONS, self.agg, "loss aggregation")
        lookup(KL_ESTIMATORS, self.kl_estimator, "KL estimator")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling {self.sampling!r}; known: {', '.join(SAMPLING_MODES)}")
        lookup(CORRECTIONS, self.rollout_correction, "rollout correction")
        if self.old_logprobs not in OLD_LOGPROBS:
            raise ValueError(f"unknown old_logprobs {self.old_logprobs!r}; known: {', '.join(OLD_LOGPROBS)}")
        if self.mini_batches < 1 or self.epochs < 1:
            raise ValueError(f"mini_batches and epochs must be >= 1, got {self.mini_batches} and {self.epochs}")
        if self.correction_threshold <= 1.0:
            raise ValueError(f"correction_threshold must be > 1, got {self.correction_threshold}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.filter_metric not in FILTER_METRICS:
            raise ValueError(f"unknown filter_metric {self.filter_metric!r}; known: {', '.join(FILTER_METRICS)}")
        if self.eps_high <= 0 or (self.eps_low is not None and not 0 <= self.eps_low < 1):
            raise ValueError(f"clip range must have eps_high > 0 and eps_low in [0, 1), got {self.eps_low} / {self.eps_high}")
        if self.clip_ratio_c is not None and (self.loss != "ppo_clip" or self.clip_ratio_c <= 1):
            raise ValueError(f"clip_ratio_c (dual clip) applies to ppo_clip and must be > 1, got {self.clip_ratio_c} with loss {self.loss}")
        if self.scale_by_std and self.estimator != "v05":
            raise ValueError("scale_by_std applies to the v05 estimator only")

    def loss_kwargs(self) -> dict[str, float]:
        """Keyword arguments of the policy loss (for :func:`rlvr.algorithms.policy_loss`)."""
        kwargs = {"eps_high": self.eps_high}
        if self.eps_low is not None:
            kwargs["eps_low"] = self.eps_low
        if self.clip_ratio_c is not None:
            kwargs["clip_ratio_c"] = self.clip_ratio_c
        return kwargs

    def estimator_kwargs(self) -> dict[str, bool]:
        """Keyword arguments of the estimator, besides per-step inputs such as baselines."""
        return {"scale_by_std": self.scale_by_std} if self.estimator == "v05" else {}


PRESETS: dict[str, AlgorithmPreset] = {
    p.name: p
    for p in (
        AlgorithmPreset("grpo", "grpo", "ppo_clip", "seq-mean-token-mean", 0.2, 0.2),
        AlgorithmPreset("drgrpo", "drgrpo", "ppo_clip", "seq-mean-token-sum-norm", 0.2, 0.2),
        AlgorithmPreset("rloo", "rloo", "ppo_clip", "token-mean", 0.2, 0.2),
        AlgorithmPreset(
            "dapo", "grpo", "ppo_clip", "token-mean", 0.2, 0.28, sampling="dynamic_filter", overlong=True, mini_batches=4,
            clip_ratio_c=10.0,
        ),
        AlgorithmPreset("cispo", "grpo", "cispo", "token-mean", None, 0.2, mini_batches=4),
        AlgorithmPreset("v05", "v05", "ppo_clip", "token-mean", 0.2, 0.2, sampling="adaptive"),
    )
}


def get_preset(name: str) -> AlgorithmPreset:
    """The preset registered as ``name``; an unknown name raises ValueError listing the known ones."""
    return lookup(PRESETS, name, "algorithm preset")
