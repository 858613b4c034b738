"""Losing a node in a simulated cluster (``ray.cluster_utils``): its roles start again elsewhere when
another node has room for their bundles; otherwise the run stops with a checkpoint and a message."""

from pathlib import Path

import psutil
import pytest
import ray
from helpers import TINY, at_step, start_test_ray

from rlvr.config import compose
from rlvr.runtime.faults import RoleFailed
from rlvr.train.loop import train


@pytest.fixture(scope="module")
def cluster(rlvr_cache):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"fake_gpu": 2, "trainer_node": 1}})
    c.add_node(num_cpus=1, resources={"fake_gpu": 1, "rollout_node": 1})
    c.add_node(num_cpus=1, resources={"cpu_node": 1})
    c.add_node(num_cpus=1, resources={"cpu_node": 1})
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()
    start_test_ray()  # the run's shared Ray, for the tests after this module


def overrides(c, run_dir: Path, *extra) -> list[str]:
    return TINY + [
        f"cluster.address={c.address}",
        "cluster.accelerator=fake_gpu",
        "cluster.num_learners=1",
        "cluster.node_resources={learner: trainer_node, rollout: rollout_node, value: cpu_node, verifier: cpu_node}",
        "cluster.placement_timeout_s=30",
        "trainer.steps=3",
        "trainer.eval_every=0",
        "trainer.save_every=1",
        f"run_dir={run_dir}",
        *extra,
    ]


def node_running(c, actor_class: str):
    """The cluster node whose raylet is an ancestor of ``actor_class``'s process."""
    raylets = {n.all_processes["raylet"][0].process.pid: n for n in c.list_all_nodes()}
    for p in psutil.process_iter(["cmdline"]):
        if (p.info["cmdline"] or [""])[0].startswith(f"ray::{actor_class}"):
            for parent in p.parents():
                if parent.pid in raylets:
                    return raylets[parent.pid]
    raise AssertionError(f"no {actor_class} process")


@pytest.mark.slow
def test_the_roles_of_a_lost_node_restart_on_another(cluster, tiny_model, tmp_path, monkeypatch):
    """The value server's node goes after step 1's update: it and anything else there start on the other
    cpu_node, and the run completes."""
    run_dir = tmp_path / "run"
    at_step(monkeypatch, 1, lambda: cluster.remove_node(node_running(cluster, "ValueServer")))
    history = train(compose(overrides(cluster, run_dir, "algorithm=v05")))["history"]
    last = history[-1]
    assert last["step"] == 3 and last["faults/value_restarts"] == 1


@pytest.mark.slow
def test_a_lost_node_with_no_room_elsewhere_stops_with_a_checkpoint(cluster, tiny_model, tmp_path, monkeypatch):
    """The only rollout node goes after step 1: no replacement engine can be placed, so the run
    stops with step 1's checkpoint and says why."""
    run_dir = tmp_path / "run"
    at_step(monkeypatch, 1, lambda: cluster.remove_node(node_running(cluster, "RolloutEngine")))
    with pytest.raises(RoleFailed, match=r"no replacement for rollout engine 0 started within cluster.placement_timeout_s=30.*checkpoint at step 1"):
        train(compose(overrides(cluster, run_dir, "algorithm=grpo")))
    assert (run_dir / "checkpoints" / "step_00000001").is_dir()
