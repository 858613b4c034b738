"""Every piece of RL math in rlvr, as pure torch functions selected by name.

No Ray, no I/O: actors call these. See docs/algorithms.md for the formulas and defaults.
"""

from . import v05
from .advantages import ESTIMATORS, compute_advantages, group_stats
from .correction import CORRECTIONS, rollout_correction, rollout_mismatch
from .dapo import default_overlong_buffer, dynamic_sampling_keep_mask, mask_truncated, overlong_penalty
from .losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, aggregate, kl_penalty, policy_loss
from .metrics import pass_at_k
from .presets import AlgorithmPreset
from .weighting import WEIGHTINGS, HADWState, apply_weighting

__all__ = [
    "AGGREGATIONS",
    "CORRECTIONS",
    "ESTIMATORS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "WEIGHTINGS",
    "AlgorithmPreset",
    "HADWState",
    "aggregate",
    "apply_weighting",
    "compute_advantages",
    "default_overlong_buffer",
    "dynamic_sampling_keep_mask",
    "group_stats",
    "kl_penalty",
    "mask_truncated",
    "overlong_penalty",
    "pass_at_k",
    "policy_loss",
    "rollout_correction",
    "rollout_mismatch",
    "v05",
]
