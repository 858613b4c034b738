"""Moving policy weights from the learners to the rollout engines, in buckets.

Parameters are grouped into buckets of about `learner.bucket_mb` MB (in parameter order), and each
bucket travels as one object: per-tensor transfers pay a round trip per tensor, several hundred per
model (benchmarks/micro/weight_sync.py measures the difference). Under ZeRO-3 the learners gather one
bucket at a time, never the whole model.

Three backends (`cluster.weight_sync`):

    ray   rank 0 puts each bucket in the object store, every engine streams them (any hardware)
    nccl  rank 0 broadcasts each packed bucket to the engines over a torch process group
          (NCCL on GPUs; the same code runs over gloo on a CPU box, which is how CI tests it)
    ipc   colocated: learner rank r shares packed buckets with engine r through shared memory
          (CUDA IPC handles on GPUs, torch shared memory files on CPU). The packed buckets of the
          whole model stay alive until the engine has loaded them: one extra copy per rank,
          transiently, since vLLM reloads a model in one call

This module holds the pieces both ends share; the learner and the engine call them.
"""

from __future__ import annotations

import datetime
import pickle
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import ray
import torch

from rlvr.runtime.faults import gather

BACKENDS = ("ray", "nccl", "ipc")


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return int(torch.Size(self.shape).numel()) * torch.empty((), dtype=self.dtype).element_size()


def plan_buckets(specs: list[TensorSpec], bucket_mb: float) -> list[list[TensorSpec]]:
    """Consecutive runs of tensors of at most `bucket_mb` MB each (a bigger tensor gets its own).

    `bucket_mb=0` gives one tensor per bucket: the per-tensor baseline of the benchmark.
    """
    limit = bucket_mb * 2**20
    buckets: list[list[TensorSpec]] = []
    current: list[TensorSpec] = []
    size = 0
    for spec in specs:
        if current and size + spec.nbytes > limit:
            buckets.append(current)
            current, size = [], 0
        current.append(spec)
        size += spec.nbytes
    if current:
        buckets.append(current)
    return buckets


def pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of any dtypes -> one flat uint8 buffer (one transfer, one allocation on receipt)."""
    return torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors])


def unpack(flat: torch.Tensor, specs: list[TensorSpec]) -> list[tuple[str, torch.Tensor]]:
    """Inverse of `pack`: views into `flat` (a copy only where mixed dtypes misalign a tensor)."""
    expected = sum(s.nbytes for s in specs)
    if expected != flat.numel():
        raise ValueError(f"weight bucket holds {flat.numel()} bytes, its spec {expected}")
    out, offset = [], 0
    for s in specs:
        n = s.nbytes
        raw = flat[offset : offset + n]
        if offset % torch.empty((), dtype=s.dtype).element_size():
            raw = raw.clone()
        out.append((s.name, raw.view(s.dtype).view(s.shape)))
        offset += n
    return out


def put_bucket(named: list[tuple[str, torch.Tensor]]) -> tuple[ray.ObjectRef, list[TensorSpec]]:
    """`ray` backend: one packed bucket in the object store, as a numpy array so that readers on
    the node map it without a copy (Ray stores numpy buffers out of band)."""
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in named]
    return ray.put(pack([t for _, t in named]).cpu().numpy()), specs


def fetch_buckets(buckets: list[tuple[ray.ObjectRef, list[TensorSpec]]]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of each packed bucket from the object store, one bucket in memory at a time."""
    for ref, specs in buckets:
        with warnings.catch_warnings():
            # the mapped buffer is read-only; loaders copy out of it and never write to it
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.from_numpy(ray.get(ref))
        yield from unpack(flat, specs)


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


def connect(backend: str, learners: list, engines: list, address: tuple[str, int] | None) -> None:
    """Open the nccl backend's group: learner rank 0 is rank 0, engine i is rank i + 1.

    `address` is a free port on learner rank 0's node (see `rlvr.runtime.placement.rendezvous`).
    """
    if backend != "nccl":
        return
    host, port = address
    world = 1 + len(engines)
    ray.get(
        [learners[0].open_sync_group.remote(host, port, world, 0)]
        + [e.open_sync_group.remote(host, port, world, i + 1) for i, e in enumerate(engines)]
    )


def sync_weights(backend: str, learners: list, engines: list, version: int, bucket_mb: float | None = None,
                 timeout_s: float | None = None, on_failure: Callable[[dict[int, BaseException], float], None] | None = None) -> dict:
    """Driver side of one sync. Every learner rank takes part (ZeRO-3 gathers collectively).

    `bucket_mb` overrides the learners' `learner.bucket_mb`. Returns seconds, bytes and GB/s.
    With `on_failure`, an engine that dies or does not load within `timeout_s` (a stopped process
    never answers) does not hang or fail the sync: ``on_failure({engine index: error}, start)``
    runs once the others have loaded, and replaces them (`RolloutPool.replace_failed`).
    """
    start = time.perf_counter()
    if backend == "ray":
        exported = ray.get([l.export_weights.remote(bucket_mb) for l in learners])
        buckets, nbytes = exported[0]
        load_s = wait_loads([e.update_weights.remote(version, buckets) for e in engines], timeout_s, on_failure, start)
    elif backend == "nccl":
        specs = ray.get(learners[0].bucket_specs.remote(bucket_mb))
        sends = [l.broadcast_weights.remote(bucket_mb) for l in learners]
        loads = [e.receive_weights.remote(version, specs) for e in engines]
        # a member lost mid-broadcast breaks the group for everyone: no engine can be replaced
        load_s = wait_loads(loads, timeout_s, None, start)
        nbytes = ray.get(sends)[0]
    elif backend == "ipc":
        specs = ray.get(learners[0].bucket_specs.remote(bucket_mb))
        handles = ray.get([l.share_weights.remote(len(engines), bucket_mb) for l in learners])
        try:
            loads = [e.open_shared_weights.remote(version, handles[i], specs) for i, e in enumerate(engines)]
            load_s = wait_loads(loads, timeout_s, on_failure, start)
        finally:
            ray.get([l.release_shared.remote() for l in learners])
        nbytes = sum(s.nbytes for bucket in specs for s in bucket)
    else:
        raise ValueError(f"unknown weight sync backend {backend!r}; known: {BACKENDS}")
    seconds = time.perf_counter() - start
    return {"time/sync": seconds, "sync/bytes": nbytes, "sync/load_s": load_s, "sync/gb_per_s": nbytes / 1e9 / max(seconds, 1e-9)}


def wait_loads(loads: list, timeout_s: float | None, on_failure: Callable | None, start: float) -> float:
    """The slowest engine's load seconds. Without `on_failure` a lost engine raises (a missed
    deadline as `TimeoutError`); with it, the lost engines are handed to it by index."""
    answers, failures = gather(dict(enumerate(loads)), timeout_s, "rollout.timeout_s")
    if failures and on_failure is None:
        raise next(iter(failures.values()))
    if failures:
        on_failure(failures, start)
    return max(answers.values(), default=0.0)