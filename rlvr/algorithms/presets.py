"""An algorithm as a composition of registered parts, checked: `AlgorithmPreset`.

A preset composes parts from the registries: advantage estimator, policy loss and its
clip range, loss aggregation, sampling strategy of the BudgetController, and KL.
The advantage weighting (``weighting=none|focal|hadw``) is orthogonal and not part of it.

The presets themselves are the files of ``configs/algorithm/`` (``algorithm=NAME``): each holds
only its differences from ``grpo.yaml``, and the config tree is the one source of their values,
so this dataclass has no defaults. A new algorithm is its registered parts plus one such file.
"""

from __future__ import annotations

import inspect
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
    eps_low: float | None
    eps_high: float
    sampling: str
    kl_coef: float
    kl_estimator: str
    overlong: bool
    mask_truncated: bool
    scale_by_std: bool
    mini_batches: int
    epochs: int
    old_logprobs: str
    rollout_correction: str
    correction_threshold: float
    clip_ratio_c: float | None
    filter_metric: str

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
        takes_eps_low = "eps_low" in inspect.signature(POLICY_LOSSES[self.loss]).parameters if self.loss in POLICY_LOSSES else True
        if takes_eps_low == (self.eps_low is None):  # a None was dropped for the loss's own default; a value crashed cispo at its first step
            raise ValueError(f"eps_low: the {self.loss} loss " + ("needs a lower clip (eps_low), got null" if takes_eps_low
                                                                   else f"has no lower clip: eps_low must be null, got {self.eps_low}"))
        if self.clip_ratio_c is not None and (self.loss != "ppo_clip" or self.clip_ratio_c <= 1):
            raise ValueError(f"clip_ratio_c (dual clip) applies to ppo_clip and must be > 1, got {self.clip_ratio_c} with loss {self.loss}")
        if self.scale_by_std and self.estimator != "v05":
            raise ValueError("scale_by_std applies to the v05 estimator only")

    @property
    def uses_value_model(self) -> bool:
        """V0.5's adaptive sampling reads a prior from the value server; no other mode starts one."""
        return self.sampling == "adaptive"

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
