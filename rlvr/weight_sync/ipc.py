"""`cluster.weight_sync=ipc`, colocated roles: learner rank r shares packed buckets with engine r through
shared memory (CUDA IPC handles on GPUs, files in /dev/shm on CPU). The packed buckets of the whole
model stay alive until the engine has loaded them: one extra copy per rank, transiently, since vLLM
reloads a model in one call.

On CPU the learner owns each file's life: it creates the file, and `release` unlinks it once the sync
is over, whether the engine loaded it, failed, or never opened it (an engine mapping it keeps its
pages until it lets go). torch's own shared-memory files are not used: their count is taken once
for the receiver at pickling and given back only when the receiver opens them, so a bucket whose
engine died or stopped before opening it outlived the run in /dev/shm.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from rlvr.checkpoint import pid_alive

if TYPE_CHECKING:
    from rlvr.weight_sync.base import Deadlines, OnFailure

SHM_DIR = Path("/dev/shm")
FILE_PREFIX = "rlvr-weights-"


class Shared(NamedTuple):
    """One bucket as shared: what the sender keeps alive until `release`, and what it sends."""

    tensor: torch.Tensor
    handle: bytes
    path: Path | None  # the CPU file, unlinked by `release`


def share(flat: torch.Tensor) -> Shared:
    """A handle another process on this node can open without a copy in transit."""
    if flat.is_cuda:
        from multiprocessing.reduction import ForkingPickler

        return Shared(flat, bytes(ForkingPickler.dumps(flat)), None)
    path = SHM_DIR / f"{FILE_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
    mapped = torch.from_file(str(path), shared=True, size=flat.numel(), dtype=torch.uint8)
    mapped.copy_(flat.view(torch.uint8).reshape(-1))
    return Shared(mapped, json.dumps({"path": str(path), "nbytes": flat.numel()}).encode(), path)


def open_shared(handle: bytes) -> torch.Tensor:
    """The sender's bucket, mapped (CPU) or opened by its CUDA IPC handle."""
    if handle.startswith(b"{"):
        spec = json.loads(handle)
        if not os.path.exists(spec["path"]):
            raise FileNotFoundError(f"the learner's shared weight bucket {spec['path']} is gone: "
                                    "it was released (the sync had ended) or the learner died")
        return torch.from_file(spec["path"], shared=False, size=spec["nbytes"], dtype=torch.uint8)
    import pickle

    return pickle.loads(handle)


def release(shared: list[Shared]) -> None:
    """Unlink the CPU files (an engine that mapped one keeps its pages until it lets go)."""
    for bucket in shared:
        if bucket.path is not None:
            bucket.path.unlink(missing_ok=True)


def remove_orphans() -> list[Path]:
    """Unlink the files of learner processes that no longer exist (killed between share and release)."""
    removed = []
    for path in SHM_DIR.glob(f"{FILE_PREFIX}*"):
        pid = path.name[len(FILE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def sync(learners: list, engines: list, version: int, bucket_mb: float | None, deadlines: Deadlines,
         on_failure: OnFailure | None, start: float) -> tuple[int, dict[str, float]]:
    import ray  # here, so the two ends above import without Ray (the GPU check has none)

    from rlvr.weight_sync.base import wait_loads

    specs = ray.get(learners[0].bucket_specs.remote(bucket_mb), timeout=deadlines.learners)
    handles = ray.get([l.share_weights.remote(len(engines), bucket_mb) for l in learners], timeout=deadlines.learners)
    try:
        loads = [e.open_shared_weights.remote(version, handles[i], specs) for i, e in enumerate(engines)]
        report = wait_loads(loads, deadlines, on_failure, start)
    finally:
        ray.get([l.release_shared.remote() for l in learners], timeout=deadlines.learners)
    return sum(s.nbytes for bucket in specs for s in bucket), report
