"""`algorithm.sampling=dynamic_filter` (DAPO): drop groups whose correctness (`filter_metric=acc`, DAPO's
and verl's choice) or shaped reward (`reward`) is all equal, and draw fresh prompts until the batch is
full of mixed groups, for at most `max_rounds` generation rounds of a whole batch each."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from rlvr.algorithms import dynamic_sampling_keep_mask
from rlvr.data import Problem
from rlvr.seeds import round_seed
from rlvr.types import Batch

if TYPE_CHECKING:
    from rlvr.train.controller import BudgetController

log = logging.getLogger(__name__)


def collect_dynamic_filter(ctl: BudgetController, problems: list[Problem], more_problems: Callable[[int], list[Problem]],
                           seed: int) -> Batch:
    """DAPO: keep the groups whose `filter_metric` varies, draw fresh prompts for the rest, for at most
    `max_rounds` generation rounds."""
    target, kept, rounds = len(problems), [], 0
    dropped = dropped_reward_mixed = dropped_acc_mixed = 0
    pending = problems
    while pending and rounds < ctl.cfg.max_rounds:
        groups = ctl.sample(pending, [ctl.cfg.n] * len(pending), round_seed(seed, rounds))
        rounds += 1
        round_batch = Batch(groups)
        ids = round_batch.group_ids()
        acc_mixed = dynamic_sampling_keep_mask(round_batch.correctness(), ids).tolist() if groups else []
        reward_mixed = dynamic_sampling_keep_mask(round_batch.rewards(), ids).tolist() if groups else []
        keep = acc_mixed if ctl.cfg.filter_metric == "acc" else reward_mixed
        kept += [g for g, k in zip(groups, keep) if k]
        dropped += sum(not k for k in keep)
        # groups the shaped reward alone would have kept: all right or all wrong, differing in length
        dropped_reward_mixed += sum(m and not k for k, m in zip(keep, reward_mixed))
        dropped_acc_mixed += sum(m and not k for k, m in zip(keep, acc_mixed))  # 0 under filter_metric=acc
        # A refill is a whole batch of fresh prompts, as verl's recipe draws a generation batch each
        # round, and what is kept past the target is dropped. Drawing only the missing prompts gave
        # each slot max_rounds tries: at 48 % of groups mixed, 3 rounds filled 8 slots 30 % of the time.
        pending = more_problems(target) if len(kept) < target and rounds < ctl.cfg.max_rounds else []
    stats = {
        "dapo/rounds": rounds,
        "dapo/kept_groups": min(len(kept), target),
        "dapo/target_groups": target,
        "dapo/dropped_groups": dropped,
        "dapo/dropped_reward_mixed": dropped_reward_mixed,
        "dapo/dropped_acc_mixed": dropped_acc_mixed,
    }
    if len(kept) < target:
        log.warning("dynamic sampling: %d of %d mixed groups after %d rounds", len(kept), target, rounds)
    return Batch(kept[:target], stats=stats)
