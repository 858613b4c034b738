"""`cluster.weight_sync=ray`: learner rank 0 puts each packed bucket in Ray's object store and every
engine streams them, one bucket in memory at a time (any hardware, any placement)."""

from __future__ import annotations

import warnings
from typing import Iterator

import ray
import torch

from rlvr.weight_sync.base import Deadlines, OnFailure, wait_loads
from rlvr.weight_sync.buckets import TensorSpec, pack, unpack


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


def sync(learners: list, engines: list, version: int, bucket_mb: float | None, deadlines: Deadlines,
         on_failure: OnFailure | None, start: float) -> tuple[int, dict[str, float]]:
    exported = ray.get([l.export_weights.remote(bucket_mb) for l in learners], timeout=deadlines.learners)
    buckets, nbytes = exported[0]
    report = wait_loads([e.update_weights.remote(version, buckets) for e in engines], deadlines, on_failure, start)
    return nbytes, report
