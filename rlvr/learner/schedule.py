"""The learning rate over a run: `learner.lr` times a factor of the optimizer step, as Hugging Face's
schedules (`transformers.optimization`, which TRL uses) and verl's (`verl/utils/torch_functional.py`)
define it. With s the optimizer steps taken, W = `learner.lr_warmup_steps`, T the run's optimizer
steps (trainer.steps × learner.mini_batches × learner.epochs) and m = `learner.min_lr_ratio`:

    warm-up (s < W)  s / W              (the first step takes lr 0, as in both)
    constant         1
    linear           m + (1 − m) · max(0, (T − s) / (T − W))
    cosine           m + (1 − m) · ½ (1 + cos(π · min(1, (s − W) / (T − W))))

m = 0 is Hugging Face's linear and cosine; verl's cosine takes its `min_lr_ratio`.
"""

from __future__ import annotations

import math
from typing import Callable

LR_SCHEDULES: dict[str, Callable[[float, float], float]] = {
    # after the warm-up: the factor at `progress` in [0, 1] of the remaining steps, before m is applied
    "constant": lambda progress, m: 1.0,
    "linear": lambda progress, m: m + (1 - m) * max(0.0, 1.0 - progress),
    "cosine": lambda progress, m: m + (1 - m) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))),
}


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """The multiplier of the base lr for the optimizer step taken after ``step`` steps (0-based)."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return LR_SCHEDULES[schedule](progress, min_ratio)
