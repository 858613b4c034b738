"""What every backend moves: parameters grouped into buckets of about `learner.bucket_mb` MB (in
parameter order), each packed into one flat byte buffer, one transfer each."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
