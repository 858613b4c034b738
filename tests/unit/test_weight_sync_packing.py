"""Bucketed weight sync: packing, unpacking and bucket planning (the backends moving a trained policy
into an engine are tests/integration/test_weight_sync.py)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr.weight_sync.buckets import TensorSpec, pack, plan_buckets, unpack

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64]


@settings(max_examples=50, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1, max_size=12),
    dtypes=st.lists(st.sampled_from(DTYPES), min_size=12, max_size=12),
    bucket_mb=st.sampled_from([0, 1e-5, 1e-4, 1.0]),
)
def test_pack_unpack_round_trip_and_bucket_plan(shapes, dtypes, bucket_mb):
    tensors = [(torch.randn(s) * 100).to(d) for s, d in zip(shapes, dtypes)]
    specs = [TensorSpec(f"t{i}", tuple(t.shape), t.dtype) for i, t in enumerate(tensors)]
    buckets = plan_buckets(specs, bucket_mb)
    assert [s for b in buckets for s in b] == specs  # every tensor once, in order
    limit = bucket_mb * 2**20
    for b in buckets:
        assert len(b) == 1 or sum(s.nbytes for s in b) <= limit  # only a lone tensor may exceed the limit
    if bucket_mb == 0:
        assert len(buckets) == len(specs)
    by_name = dict(zip((s.name for s in specs), tensors))
    for b in buckets:
        flat = pack([by_name[s.name] for s in b])
        assert flat.dtype == torch.uint8 and flat.numel() == sum(s.nbytes for s in b)
        for name, t in unpack(flat, b):
            assert t.dtype == by_name[name].dtype and torch.equal(t, by_name[name])


def test_unpack_rejects_a_spec_that_does_not_match():
    with pytest.raises(ValueError, match="bytes"):
        unpack(torch.zeros(10, dtype=torch.uint8), [TensorSpec("w", (3,), torch.float32)])


# ---- found surviving mutants (2026-12-07) -------------------------------------------------------------


def test_unpack_rejects_a_bucket_with_more_bytes_than_its_spec():
    """A mutant of buckets.py:50 `expected != flat.numel()` -> `expected > flat.numel()`: a spec that misses the
    bucket's last tensor is read silently and that weight is never loaded by the engine."""
    a, b = torch.arange(6, dtype=torch.float32), torch.arange(4, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bytes"):
        unpack(pack([a, b]), [TensorSpec("a", (6,), torch.float32)])


def test_a_bucket_is_filled_up_to_exactly_its_limit_in_mib():
    """bucket_mb is MiB (2**20 bytes), and a bucket may hold exactly that much: two float32 tensors of
    half a MiB each are one 1 MB bucket (kills `> limit` -> `>= limit`, and `2**20` -> `10**6`)."""
    half = 2**17  # float32 elements in half a MiB
    specs = [TensorSpec("a", (half,), torch.float32), TensorSpec("b", (half,), torch.float32)]
    assert plan_buckets(specs, 1.0) == [specs]
    specs3 = specs + [TensorSpec("c", (1,), torch.float32)]
    assert plan_buckets(specs3, 1.0) == [specs, [specs3[2]]]
