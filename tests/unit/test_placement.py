"""Placement plans from the cluster configs, and the too-small check (pure: no Ray)."""

import pytest

from rlvr.config import ConfigError, compose, validate
from rlvr.runtime.placement import ClusterTooSmall, check_fits, plan_placement


def gpu_nodes(n, gpus=8, cpus=64):
    return [{"CPU": cpus, "GPU": gpus, "memory": 1e12} for _ in range(n)]


@pytest.mark.parametrize("group", ["local", "single_node_gpu", "multi_node"])
def test_every_cluster_group_composes_and_validates(group):
    validate(compose([f"cluster={group}"]))


def test_local_plan_is_fractional_cpu_only():
    plan = plan_placement(compose([]).cluster)
    assert set(plan) == {"learner", "rollout", "value", "verifier"}
    for rp in plan.values():
        assert rp.bundles == [{"CPU": 0.1}]
    check_fits(plan, [{"CPU": 2.0}])  # the 2-core CI box


def test_single_node_gpu_plan_fills_eight_gpus_and_not_seven():
    plan = plan_placement(compose(["cluster=single_node_gpu"]).cluster)
    assert plan["learner"].bundles == [{"CPU": 2, "GPU": 1}] * 4
    assert plan["rollout"].bundles == [{"CPU": 2, "GPU": 1}] * 4
    assert plan["verifier"].bundles == [{"CPU": 8}]
    check_fits(plan, gpu_nodes(1))
    with pytest.raises(ClusterTooSmall) as err:
        check_fits(plan, gpu_nodes(1, gpus=7))
    msg = str(err.value)
    assert "asked for" in msg and "learner: 4 x {CPU: 2, GPU: 1}" in msg and "total {CPU: 26, GPU: 8}" in msg
    assert "available (1 node)" in msg and "node 0: {CPU: 64, GPU: 7}" in msg and "could not place" in msg


def test_multi_node_plan_needs_two_nodes_and_engines_keep_their_tp_on_one_node():
    cfg = compose(["cluster=multi_node"]).cluster
    plan = plan_placement(cfg, with_value=False)
    assert "value" not in plan
    assert plan["rollout"].bundles == [{"CPU": 2, "GPU": 2}] * 4  # one bundle per engine: TP 2 on one node
    check_fits(plan, gpu_nodes(2))
    with pytest.raises(ClusterTooSmall, match="total {CPU: 40, GPU: 16}"):
        check_fits(plan, gpu_nodes(1))
    # 1-GPU nodes cannot hold a TP-2 engine, however many GPUs there are in total
    with pytest.raises(ClusterTooSmall, match="rollout bundle"):
        check_fits(plan, [{"CPU": 64, "GPU": 1}] * 32)
    # 3-GPU nodes can: an engine and a learner on each of four, learners on the rest
    check_fits(plan, [{"CPU": 64, "GPU": 3}] * 6)


def test_cpu_only_bundles_keep_off_the_gpu_nodes():
    """A first-fit packer would put the verifier on the GPU node listed first and strand a GPU."""
    plan = plan_placement(
        compose(["cluster.accelerator=GPU", "cluster.actor_cpus=1", "cluster.verifier_cpus=3"]).cluster, with_value=False
    )
    check_fits(plan, [{"CPU": 4, "GPU": 2}, {"CPU": 4}])


def test_strict_strategies_and_node_pins():
    c = compose(["cluster=single_node_gpu", "cluster.strategy=STRICT_SPREAD"]).cluster
    with pytest.raises(ClusterTooSmall, match="learner bundle"):
        check_fits(plan_placement(c), gpu_nodes(1, gpus=100))  # 4 learners need 4 distinct nodes
    check_fits(plan_placement(c), gpu_nodes(4))
    pinned = compose(["cluster=single_node_gpu", "cluster.node_resources.rollout=rollout_node"]).cluster
    plan = plan_placement(pinned)
    assert plan["rollout"].bundles[0]["rollout_node"] > 0 and "rollout_node" not in plan["rollout"].actor
    with pytest.raises(ClusterTooSmall, match="rollout bundle"):
        check_fits(plan, gpu_nodes(1))
    check_fits(plan, gpu_nodes(1) + [{"CPU": 8, "GPU": 4, "rollout_node": 1}])


def test_colocated_engines_share_the_learner_bundles():
    c = compose(["cluster=single_node_gpu", "cluster.mode=colocated", "cluster.weight_sync=ipc"]).cluster
    plan = plan_placement(c)
    assert plan["rollout"].bundles == [] and plan["rollout"].shares_group_of == "learner"
    assert plan["learner"].actor["GPU"] == plan["rollout"].actor["GPU"] == 0.5
    check_fits(plan, gpu_nodes(1, gpus=4))  # half the GPUs of the disaggregated layout


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["cluster.weight_sync=ipc"], "cluster.weight_sync"),
        (["cluster.mode=colocated", "cluster.weight_sync=nccl"], "cluster.weight_sync"),
        (["cluster.weight_sync=smoke"], "cluster.weight_sync"),
        (["cluster.mode=colocated", "cluster.num_engines=2"], "cluster.num_engines"),
        (["cluster.mode=colocated", "cluster.tensor_parallel=2"], "cluster.tensor_parallel"),
        (["cluster.tensor_parallel=2", "rollout=hf"], "cluster.tensor_parallel"),
        (["cluster.strategy=EVERYWHERE"], "cluster.strategy"),
        (["cluster.num_learners=0"], "cluster.num_learners"),
        (["+cluster.node_resources.critic=big"], "cluster.node_resources"),
        (["learner.bucket_mb=-1"], "learner.bucket_mb"),
        (["cluster.value_accelerators=1"], "cluster.value_accelerators"),
        (["cluster.mode=colocated", "cluster.weight_sync=ipc", "cluster.node_resources.rollout=r"], "cluster.node_resources.rollout"),
        # a pin named GPU replaced the bundle's GPU: 1 with 0.001 (Ray refused the actor only once the
        # bundles were reserved); a number failed as a TypeError in the too-small message
        (["cluster=single_node_gpu", "cluster.node_resources.learner=GPU"], "cluster.node_resources.learner: GPU is a resource"),
        (["cluster=single_node_gpu", "cluster.node_resources.verifier=CPU"], "cluster.node_resources.verifier: CPU is a resource"),
        (["cluster.node_resources.learner=1"], "cluster.node_resources.learner: must be the name of a custom resource"),
    ],
)
def test_bad_cluster_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(overrides))


def test_colocated_learner_bundles_without_an_engine_ask_for_the_learners_cpus_only():
    """Every colocated learner bundle asked for twice the CPUs, though only the first num_engines host
    an engine: 4 learners and 1 engine (7 CPUs of actors) were refused on a 7-CPU node."""
    c = compose(["cluster.mode=colocated", "cluster.weight_sync=ipc", "cluster.num_learners=4", "cluster.num_engines=1",
                 "cluster.actor_cpus=1", "cluster.verifier_cpus=1"]).cluster
    plan = plan_placement(c)
    assert [b["CPU"] for b in plan["learner"].bundles] == [2.0, 1.0, 1.0, 1.0]
    asked = sum(b.get("CPU", 0) for g in plan.values() for b in g.bundles)
    check_fits(plan, [{"CPU": asked}])
    with pytest.raises(ClusterTooSmall, match=r"learner: 1 x \{CPU: 2\} \+ 3 x \{CPU: 1\}"):
        check_fits(plan, [{"CPU": asked - 1}])


def test_actor_options_carry_a_roles_gpus_and_custom_resources():
    """`rlvr eval` asked Ray for the engine's CPUs only: on a GPU cluster vLLM found no device."""
    from rlvr.runtime.placement import actor_options

    plan = plan_placement(compose(["cluster=single_node_gpu", "cluster.tensor_parallel=2"]).cluster, with_value=False)
    assert actor_options(plan["rollout"].actor) == {"num_cpus": plan["rollout"].actor["CPU"], "num_gpus": 2.0}
    assert actor_options({"CPU": 1.0, "TPU": 4.0}) == {"num_cpus": 1.0, "resources": {"TPU": 4.0}}
    assert actor_options(plan["verifier"].actor) == {"num_cpus": compose(["cluster=single_node_gpu"]).cluster.verifier_cpus}


# ---- found surviving mutants (2026-12-07) -------------------------------------------------------------


def test_strict_pack_needs_one_node_for_all_the_groups_bundles():
    """A mutant of placement.py:165 summing every bundle of a STRICT_PACK group -> only the first: 4 learner GPUs
    on nodes of 2 pass the early check, and the run waits placement.timeout_s for a group Ray cannot place."""
    from rlvr.config import compose
    from rlvr.runtime.placement import ClusterTooSmall, check_fits, plan_placement

    c = compose(["cluster=single_node_gpu", "cluster.strategy=STRICT_PACK"]).cluster
    plan = plan_placement(c)
    assert len(plan["learner"].bundles) == 4
    with pytest.raises(ClusterTooSmall, match="learner: all 4 bundles on one node"):
        check_fits(plan, [{"CPU": 64, "GPU": 2, "memory": 1e12} for _ in range(8)], roles=("learner",))
