"""Bucketed weight sync: the packing helpers, and each backend moving a trained policy into an engine."""

import os

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
    # not compared with each other: the kernel updates the high-water mark lazily, a page or two behind
    assert m["rollout/rss_mb"] > 100 and m["rollout/peak_rss_mb"] > 100 and m["sync/load_s"] >= 0  # what the engines report of themselves
    assert len(ray.get(learner.bucket_specs.remote())) > 1  # 1 MB buckets: several of them
    for name, t in trained.items():
        if name in loaded:  # a tied head appears once in the engine
            assert torch.equal(loaded[name], t), name
    ray.kill(learner)
    ray.kill(engine)


@pytest.mark.slow
def test_a_bfloat16_engine_loads_the_float32_learners_weights(ray_session, tiny_model):
    """`model.rollout_dtype=bfloat16`: the vLLM engine holds bf16 weights and KV cache while the learner
    trains float32; a sync casts on load, so the engine holds the trained weights rounded to bf16."""
    host, port = ray.get(node_address.remote())
    learner = PolicyLearner.options(num_cpus=0.1).remote(tiny_learner_config(tiny_model, lr=1e-2, threads=1), 0, 1, host, port)
    engine = RolloutEngine.options(num_cpus=0.1).remote(tiny_engine_config(tiny_model, "model.rollout_dtype=bfloat16"))

    def engine_weights() -> dict:
        return ray.get(engine.__ray_call__.remote(lambda self: self.engine.llm.collective_rpc(
            lambda worker: {n: p.detach().clone() for n, p in worker.get_model().named_parameters()})[0]))

    before = engine_weights()
    ray.get(learner.train_step.remote([mini_batch(SEQS)], tiny_update_config("algorithm=grpo")))
    connect("ray", [learner], [engine], ray.get(node_address.remote()))
    sync_weights("ray", [learner], [engine], version=1)
    refs, _ = ray.get(learner.export_weights.remote())
    trained = dict(fetch_buckets(refs))
    loaded = engine_weights()
    assert {p.dtype for p in loaded.values()} == {torch.bfloat16}
    assert all(t.dtype == torch.float32 for t in trained.values())
    shared = [n for n in trained if n in loaded and loaded[n].shape == trained[n].shape]  # embeddings and norms keep HF's names
    assert "model.embed_tokens.weight" in shared and len(shared) > 2
    for name in shared:
        assert torch.equal(loaded[name], trained[name].to(torch.bfloat16)), name
    assert not torch.equal(before["model.embed_tokens.weight"], loaded["model.embed_tokens.weight"])  # the step moved them
    ray.kill(learner)
    ray.kill(engine)


@pytest.mark.slow
def test_wait_loads_reports_the_slowest_load_and_the_largest_memory(ray_session):
    """Kills `max` -> `min` over the engines' load seconds (the metric is the slowest engine's)."""
    from rlvr.weight_sync.base import NO_DEADLINES, wait_loads

    loads = [ray.put({"load_s": 1.0, "rss_mb": 500.0, "peak_rss_mb": 700.0}),
             ray.put({"load_s": 3.0, "rss_mb": 200.0, "peak_rss_mb": 900.0})]
    assert wait_loads(loads, NO_DEADLINES, None, 0.0) == {"sync/load_s": 3.0, "rollout/rss_mb": 500.0, "rollout/peak_rss_mb": 900.0}


@pytest.mark.slow
def test_put_bucket_and_fetch_buckets_keep_each_tensor_s_dtype(ray_session):
    """Kills put_bucket's spec taking one dtype for all (the learner's float32 hid it from the suite)."""
    from rlvr.weight_sync.ray_objects import put_bucket

    named = [("a", torch.arange(5, dtype=torch.bfloat16)), ("b", torch.arange(3, dtype=torch.int64).view(3, 1)),
             ("c", torch.randn(2, 2))]
    got = dict(fetch_buckets([put_bucket(named)]))
    for n, t in named:
        assert got[n].dtype == t.dtype and torch.equal(got[n], t), n


@pytest.mark.slow
def test_ipc_sync_pairs_learner_r_with_engine_r_and_releases_every_file(ray_session):
    """ipc.sync with two colocated pairs (the learners and engines here are small Ray actors holding
    distinct weights, sharing through the real ipc ends): engine r loads learner r's buckets, the sync
    reports the bytes of one copy, and no /dev/shm file outlives the sync (kills: handles[0] for
    every engine, the release in `finally` dropped, the byte count off)."""
    from rlvr.weight_sync import ipc, sync_weights
    from rlvr.weight_sync.buckets import TensorSpec, pack, plan_buckets, unpack

    @ray.remote(num_cpus=0)
    class Learner:
        def __init__(self, rank):
            self.named = [("w", torch.full((300,), float(rank))), ("b", torch.full((10,), rank, dtype=torch.int64))]
            self.shared = []

        def bucket_specs(self, bucket_mb):
            return plan_buckets([TensorSpec(n, tuple(t.shape), t.dtype) for n, t in self.named], 0)

        def share_weights(self, num_engines, bucket_mb):
            self.shared = [ipc.share(pack([t])) for _, t in self.named]
            return [s.handle for s in self.shared]

        def release_shared(self):
            ipc.release(self.shared)
            self.shared = []

        def pid(self):
            return os.getpid()

    @ray.remote(num_cpus=0)
    class Engine:
        def open_shared_weights(self, version, handles, specs):
            self.loaded = {n: t.clone() for h, b in zip(handles, specs) for n, t in unpack(ipc.open_shared(h), b)}
            return {"load_s": 0.0, "rss_mb": 1.0, "peak_rss_mb": 1.0}

        def get(self):
            return self.loaded

    learners, engines = [Learner.remote(r) for r in range(2)], [Engine.remote() for _ in range(2)]
    pids = ray.get([l.pid.remote() for l in learners])
    m = sync_weights("ipc", learners, engines, version=1)
    assert m["sync/bytes"] == 300 * 4 + 10 * 8
    for r, e in enumerate(engines):
        loaded = ray.get(e.get.remote())
        assert torch.equal(loaded["w"], torch.full((300,), float(r))) and torch.equal(loaded["b"], torch.full((10,), r))
    assert not [p for pid in pids for p in ipc.SHM_DIR.glob(f"{ipc.FILE_PREFIX}{pid}-*")]
    for a in learners + engines:
        ray.kill(a)
