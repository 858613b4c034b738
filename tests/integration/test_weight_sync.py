"""Bucketed weight sync: the packing helpers, and each backend moving a trained policy into an engine."""

import pytest
import ray
import torch
from helpers import (
    mini_batch,
    tiny_engine_config,
    tiny_learner_config,
    tiny_update_config,
)

from rlvr.learner.actor import PolicyLearner
from rlvr.rollout.pool import RolloutEngine
from rlvr.runtime.placement import node_address
from rlvr.types import Trajectory
from rlvr.weight_sync import connect, sync_weights
from rlvr.weight_sync.ray_objects import fetch_buckets

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64]






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
        tiny_learner_config(tiny_model, lr=1e-2, threads=1, bucket_mb=1), 0, 1, host, port
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
