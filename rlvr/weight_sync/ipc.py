"""`cluster.weight_sync=ipc`, colocated roles: learner rank r shares packed buckets with engine r through
shared memory (CUDA IPC handles on GPUs, torch shared-memory files on CPU). The packed buckets of the
whole model stay alive until the engine has loaded them: one extra copy per rank, transiently, since
vLLM reloads a model in one call."""

from __future__ import annotations

import pickle

import ray
import torch

from rlvr.weight_sync.base import Deadlines, OnFailure, wait_loads


def share(flat: torch.Tensor) -> bytes:
    """A handle another process on this node can open without a copy: CUDA IPC for GPU tensors,
    a torch shared-memory file for CPU ones. The sender must keep `flat` alive until it is loaded."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing as tmp

    # The default file-descriptor strategy hands fds over a multiprocessing connection that only
    # the sender's children can open; named shared-memory files work between any two processes.
    tmp.set_sharing_strategy("file_system")
    return bytes(ForkingPickler.dumps(flat))


def open_shared(handle: bytes) -> torch.Tensor:
    import torch.multiprocessing as tmp

    tmp.set_sharing_strategy("file_system")
    return pickle.loads(handle)


def sync(learners: list, engines: list, version: int, bucket_mb: float | None, deadlines: Deadlines,
         on_failure: OnFailure | None, start: float) -> tuple[int, dict[str, float]]:
    specs = ray.get(learners[0].bucket_specs.remote(bucket_mb), timeout=deadlines.learners)
    handles = ray.get([l.share_weights.remote(len(engines), bucket_mb) for l in learners], timeout=deadlines.learners)
    try:
        loads = [e.open_shared_weights.remote(version, handles[i], specs) for i, e in enumerate(engines)]
        report = wait_loads(loads, deadlines, on_failure, start)
    finally:
        ray.get([l.release_shared.remote() for l in learners], timeout=deadlines.learners)
    return sum(s.nbytes for bucket in specs for s in bucket), report
