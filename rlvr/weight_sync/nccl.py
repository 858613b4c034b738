"""`cluster.weight_sync=nccl`: learner rank 0 broadcasts each packed bucket to the engines over a torch
process group of its own (NCCL on GPUs; the same code runs over gloo on a CPU box, which is how CI
tests it). Learner rank 0 is rank 0 of the group, engine i rank i + 1."""

from __future__ import annotations

import datetime

import ray
import torch

from rlvr.weight_sync.base import Deadlines, OnFailure, wait_loads


def open_group(host: str, port: int, world_size: int, rank: int, device: torch.device, timeout_s: float = 600.0):
    """A process group of learner rank 0 (rank 0 here) and the engines, apart from DeepSpeed's own.

    Built on its own TCPStore so it needs no torch.distributed default group: the engines have
    none, and the learners' default group spans only the learners.
    """
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
    if device.type == "cuda":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


def broadcast(group, tensor: torch.Tensor) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


def connect(learners: list, engines: list, address: tuple[str, int]) -> None:
    """Open the group. `address` is a free port on learner rank 0's node (`rlvr.runtime.placement.rendezvous`)."""
    host, port = address
    world = 1 + len(engines)
    ray.get(
        [learners[0].open_sync_group.remote(host, port, world, 0)]
        + [e.open_sync_group.remote(host, port, world, i + 1) for i, e in enumerate(engines)]
    )


def sync(learners: list, engines: list, version: int, bucket_mb: float | None, deadlines: Deadlines,
         on_failure: OnFailure | None, start: float) -> tuple[int, dict[str, float]]:
    specs = ray.get(learners[0].bucket_specs.remote(bucket_mb), timeout=deadlines.learners)
    sends = [l.broadcast_weights.remote(bucket_mb) for l in learners]
    loads = [e.receive_weights.remote(version, specs) for e in engines]
    # a member lost mid-broadcast breaks the group for everyone: no engine can be replaced
    report = wait_loads(loads, deadlines, None, start)
    return ray.get(sends, timeout=deadlines.learners)[0], report
