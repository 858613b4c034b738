"""Moving policy weights from the learners to the rollout engines, in buckets.

Parameters are grouped into buckets of about `learner.bucket_mb` MB (in parameter order), and each
bucket travels as one object: per-tensor transfers pay a round trip per tensor, several hundred per
model (benchmarks/micro/weight_sync.py measures the difference). Under ZeRO-3 the learners gather one
bucket at a time, never the whole model.

One module per backend (`cluster.weight_sync`), each holding both ends of its wire and its driver
side, `sync` (base.py says what a backend is):

    ray   ray_objects.py  rank 0 puts each bucket in the object store, every engine streams them
    nccl  nccl.py         rank 0 broadcasts each packed bucket to the engines over a process group
    ipc   ipc.py          colocated: learner rank r shares packed buckets with engine r in shared memory

`buckets.py` is what they all move. A new backend is one module with `sync` (and the actor methods it
calls) and one entry in `BACKENDS`.
"""

from __future__ import annotations

import importlib
import time
from types import ModuleType

from rlvr.weight_sync.base import NO_DEADLINES, Deadlines, OnFailure

# name -> its module in this package, imported on first use (so `ipc`'s two ends import without Ray)
BACKENDS = {"ray": "ray_objects", "nccl": "nccl", "ipc": "ipc"}


def backend_module(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ValueError(f"unknown weight sync backend {name!r}; known: {tuple(BACKENDS)}")
    return importlib.import_module(f"rlvr.weight_sync.{BACKENDS[name]}")


def connect(backend: str, learners: list, engines: list, address: tuple[str, int] | None) -> None:
    """Open what a backend holds open between syncs, where its module has a `connect` (nccl: its group)."""
    open_backend = getattr(backend_module(backend), "connect", None)
    if open_backend is not None:
        open_backend(learners, engines, address)


def sync_weights(backend: str, learners: list, engines: list, version: int, bucket_mb: float | None = None,
                 deadlines: Deadlines = NO_DEADLINES, on_failure: OnFailure | None = None) -> dict:
    """Driver side of one sync. Every learner rank takes part (ZeRO-3 gathers collectively).

    `bucket_mb` overrides the learners' `learner.bucket_mb`. Returns seconds, bytes and GB/s, the
    slowest engine's load seconds and the largest engine's resident memory (`rollout/rss_mb`, and
    its high-water mark `rollout/peak_rss_mb`).
    With `on_failure`, an engine that dies or does not load within `deadlines.engines` (a stopped
    process never answers) does not hang or fail the sync: ``on_failure({engine index: error}, start)``
    runs once the others have loaded, and replaces them (`RolloutPool.replace_failed`).
    A learner rank silent past `deadlines.learners` (its export, share or broadcast) raises
    `ray.exceptions.GetTimeoutError`: the loop restarts the learners, as for a silent update.
    """
    start = time.perf_counter()
    nbytes, report = backend_module(backend).sync(learners, engines, version, bucket_mb, deadlines, on_failure, start)
    seconds = time.perf_counter() - start
    return {"time/sync": seconds, "sync/bytes": nbytes, **report, "sync/gb_per_s": nbytes / 1e9 / max(seconds, 1e-9)}
