"""How one step's trajectories are cut for the learners: per rank, one `MiniBatch` per optimizer
step, each cut into micro-batches, with the mini-batch's global token and sequence counts (each
micro-batch's loss is its share of the mini-batch's loss, whatever the ranks and micro-batches)."""

from __future__ import annotations

import random
from collections.abc import Callable

from rlvr.types import MiniBatch, Trajectory


def plan_mini_batches(
    trajectories: list[Trajectory], mini_batches: int, num_ranks: int,
    micro_batch: int | Callable[[list[Trajectory]], list[list[Trajectory]]], seed: int,
) -> list[list[MiniBatch]]:
    """Trajectories -> per rank, `mini_batches` MiniBatches (one optimizer step each).

    The split into mini-batches is a seeded shuffle (each optimizer step sees a mix of prompts);
    within one, a prompt's responses stay together (the learner runs a shared prompt once) and
    similar lengths share a micro-batch (less padding), interleaved over the ranks. A rank's share
    is cut into micro-batches of `micro_batch` sequences, or by `micro_batch(share)` (`rlvr.runtime.sizing.
    ActivationBudget`: by memory). Every rank gets equally many micro-batches (ZeRO-3 gathers in
    lockstep): a rank with fewer ends with empty ones.
    """
    cut = micro_batch if callable(micro_batch) else lambda shard: [shard[j : j + micro_batch] for j in range(0, len(shard), micro_batch)]
    order = list(trajectories)
    random.Random(seed).shuffle(order)
    m = max(1, min(mini_batches, len(order)))
    bounds = [i * len(order) // m for i in range(m + 1)]  # sizes differ by at most one
    per_rank: list[list[MiniBatch]] = [[] for _ in range(num_ranks)]
    for i in range(m):
        part = sorted(order[bounds[i] : bounds[i + 1]], key=lambda t: (len(t.prompt_ids), t.prompt_key, len(t.response_ids)))
        shards = [cut(part[r::num_ranks]) for r in range(num_ranks)]
        n_micro = max(1, max(len(s) for s in shards))
        # sequences with a token to train on: the per-sequence aggregations' means leave the others out
        tokens, sequences = max(1, sum(t.num_tokens for t in part)), max(1, sum(t.num_tokens > 0 for t in part))
        for r, micro in enumerate(shards):
            per_rank[r].append(MiniBatch(micro + [[] for _ in range(n_micro - len(micro))], tokens, sequences))
    return per_rank
