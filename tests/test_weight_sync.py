"""Bucketed weight sync: the packing helpers, and each backend moving a trained policy into an engine."""

import pytest
import ray
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner_helpers import mini_batch, tiny_engine_config, tiny_learner_config, tiny_update_config
from rlvr.batch import Trajectory
from rlvr.learner import PolicyLearner
from rlvr.placement import node_address
from rlvr.rollout import RolloutEngine
from rlvr.weight_sync import TensorSpec, connect, fetch_buckets, pack, plan_buckets, sync_weights, unpack

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


SEQS = [
    Trajectory(prompt_ids=[5, 6, 7], response_ids=[8, 9], advantage=1.0),
    Trajectory(prompt_ids=[5, 6], response_ids=[10, 11, 12], advantage=-1.0),
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ray", "nccl", "ipc"])
def test_backend_moves_the_trained_weights_into_the_engine(backend, ray_session, tiny_model):
    """After a training step, each backend leaves the engine holding exactly the learner's weights."""
    host, port = ray.get(node_address.remote())
    learner = PolicyLearner.options(num_cpus=0.1).remote(
        tiny_learner_config(tiny_model, lr=1e-2, micro_batch_size=2, threads=1, bucket_mb=1), 0, 1, host, port
    )
    engine = RolloutEngine.options(num_cpus=0.1).remote(tiny_engine_config(tiny_model, "rollout=hf"))
    ray.get(learner.train_step.remote([mini_batch(SEQS)], tiny_update_config("algorithm=grpo")))
    connect(backend, [learner], [engine], ray.get(node_address.remote()))
    m = sync_weights(backend, [learner], [engine], version=3)
    refs, nbytes = ray.get(learner.export_weights.remote())
    trained = dict(fetch_buckets(refs))
    loaded = ray.get(engine.__ray_call__.remote(lambda self: {n: p.detach().clone() for n, p in self.engine.model.named_parameters()}))
    assert ray.get(engine.weight_version.remote()) == 3
    assert m["sync/bytes"] == nbytes > 1_000_000 and m["sync/gb_per_s"] > 0
    assert len(ray.get(learner.bucket_specs.remote())) > 1  # 1 MB buckets: several of them
    for name, t in trained.items():
        if name in loaded:  # a tied head appears once in the engine
            assert torch.equal(loaded[name], t), name
    ray.kill(learner)
    ray.kill(engine)
