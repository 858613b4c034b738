"""`algorithm.sampling=fixed`: n rollouts of every prompt (GRPO, Dr.GRPO, RLOO, CISPO, GSPO)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from rlvr.data import Problem
from rlvr.types import Batch

if TYPE_CHECKING:
    from rlvr.train.controller import BudgetController


def collect_fixed(ctl: BudgetController, problems: list[Problem], more_problems: Callable[[int], list[Problem]], seed: int) -> Batch:
    return Batch(ctl.sample(problems, [ctl.cfg.n] * len(problems), seed))
