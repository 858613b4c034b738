"""Where each role runs: Ray placement groups computed from the `cluster` config.

One placement group per role, one bundle per actor:

    learner   R bundles of {CPU, accelerator: 1}  (a rank drives one device)
    rollout   E bundles of {CPU, accelerator: tensor_parallel}   (disaggregated)
              or a share of learner bundle e                      (colocated: same accelerators)
    value     1 bundle of  {CPU, accelerator: value_accelerators}
    verifier  1 bundle of  {CPU: verifier_cpus}  (its worker processes run on those CPUs)

`accelerator` names the Ray resource one accelerator is counted in: `GPU` on a GPU cluster, a
custom resource in the multi-node simulation tests, null on a CPU box. `node_resources` pins a
role to nodes that carry a custom resource (`ray start --resources='{"rollout_node": 1}'`).

`plan_placement` and `check_fits` are pure, so a cluster that is too small fails with the list of
what was asked for and what is there before any placement group or model is created.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import ray
from omegaconf import DictConfig

log = logging.getLogger(__name__)

ROLES = ("learner", "rollout", "value", "verifier")
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
MODES = ("disaggregated", "colocated")
# A pinned role asks its node for this much of the marker resource: any node carrying the
# marker can host many actors.
PIN_AMOUNT = 0.001


class ClusterTooSmall(RuntimeError):
    """The cluster cannot hold the requested placement; the message lists asked vs available."""


@dataclass
class RolePlacement:
    role: str
    bundles: list[dict[str, float]]  # one per actor, what the placement group reserves
    actor: dict[str, float]  # what each actor takes from its bundle
    strategy: str = "PACK"
    shares_group_of: str | None = None  # colocated rollout engines live in the learners' bundles


def plan_placement(cluster: DictConfig | dict, with_value: bool = True) -> dict[str, RolePlacement]:
    """The bundles each role needs, from the `cluster` config (no Ray calls).

    `with_value=False` leaves out the ValueServer (only V0.5's adaptive sampling queries it).
    """
    c = cluster
    acc = c["accelerator"]
    cpus = float(c["actor_cpus"])
    pins = dict(c["node_resources"] or {})

    def resources(n_acc: float, n_cpu: float) -> dict[str, float]:
        r = {"CPU": n_cpu}
        if acc and n_acc:
            r[acc] = float(n_acc)
        return r

    def bundle(n_acc: float, n_cpu: float, role: str) -> dict[str, float]:
        # The pin marker goes in the bundle only: it picks the node, the actors need none of it.
        return {**resources(n_acc, n_cpu), **({pins[role]: PIN_AMOUNT} if pins.get(role) else {})}

    colocated = c["mode"] == "colocated"
    # A colocated bundle also hosts an engine: the first num_engines of them (Placement.options("rollout", i))
    hosts = c["num_engines"] if colocated else 0
    plan = {
        "learner": RolePlacement(
            "learner",
            [bundle(1, cpus * (2 if i < hosts else 1), "learner") for i in range(c["num_learners"])],
            # colocated: learner and engine each take half of the bundle's accelerator, so Ray hands
            # both the same device; vLLM sleeps while the learner steps
            resources(0.5 if colocated else 1, cpus),
            c["strategy"],
        )
    }
    if colocated:
        plan["rollout"] = RolePlacement(
            "rollout", [], resources(0.5, cpus), c["strategy"], shares_group_of="learner"
        )
    else:
        tp = c["tensor_parallel"]
        plan["rollout"] = RolePlacement(
            "rollout", [bundle(tp, cpus, "rollout") for _ in range(c["num_engines"])], resources(tp, cpus), c["strategy"]
        )
    if with_value:
        value_acc = c["value_accelerators"]
        plan["value"] = RolePlacement("value", [bundle(value_acc, cpus, "value")], resources(value_acc, cpus))
    verifier_cpus = float(c["verifier_cpus"])
    plan["verifier"] = RolePlacement("verifier", [bundle(0, verifier_cpus, "verifier")], resources(0, verifier_cpus))
    return plan


def _fmt(r: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(r.items())) + "}"


def _add(total: dict[str, float], r: dict[str, float], times: int = 1) -> None:
    for k, v in r.items():
        total[k] = total.get(k, 0.0) + v * times


def _fits(free: dict[str, float], need: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _scarce(resources: dict[str, float]) -> float:
    """Accelerators and custom markers: what a bundle should not take from a node needlessly."""
    return sum(v for k, v in resources.items() if k not in ("CPU", "memory", "object_store_memory") and ":" not in k)


def _best_fit(free: list[dict[str, float]], candidates: list[int], need: dict[str, float]) -> int:
    """The node this bundle wastes least: few scarce resources it did not ask for (CPU-only bundles
    stay off GPU nodes), then the tightest fit."""

    def waste(j: int) -> tuple:
        node = free[j]
        unasked = _scarce({k: v for k, v in node.items() if k not in need})
        left = {k: node.get(k, 0.0) - v for k, v in need.items()}
        return (unasked, _scarce(left), left.get("CPU", 0.0))

    return min(candidates, key=waste)


def _pack(items: list[tuple[str, dict[str, float], str | None]], nodes: list[dict[str, float]]) -> list[str]:
    """Place items (label, need, spread group) in order, best fit; return the labels left over."""
    free = [dict(n) for n in nodes]
    used: dict[str, set[int]] = {}
    unplaced = []
    for label, need, spread in items:
        taken = used.get(spread, set()) if spread else set()
        candidates = [j for j, n in enumerate(free) if _fits(n, need) and j not in taken]
        if not candidates:
            unplaced.append(label)
            continue
        j = _best_fit(free, candidates, need)
        _add(free[j], need, -1)
        if spread:
            used.setdefault(spread, set()).add(j)
    return unplaced


def check_fits(plan: dict[str, RolePlacement], nodes: list[dict[str, float]], roles: tuple[str, ...] = ROLES) -> None:
    """Raise ClusterTooSmall unless every bundle of `roles` fits on `nodes` (total resources per node).

    Honours each group's strategy: STRICT_PACK needs one node for the whole group, STRICT_SPREAD a
    distinct node per bundle. Packing is NP-hard; this tries best-fit in three orders (scarce
    resources first, CPUs first, as configured) and accepts the cluster if any order places everything.
    """
    items: list[tuple[str, dict[str, float], str | None]] = []
    for role in roles:
        g = plan.get(role)
        if g is None or not g.bundles:
            continue
        if g.strategy == "STRICT_PACK":
            whole: dict[str, float] = {}
            for b in g.bundles:
                _add(whole, b)
            items.append((f"{g.role}: all {len(g.bundles)} bundles on one node ({_fmt(whole)})", whole, None))
        else:
            spread = g.role if g.strategy == "STRICT_SPREAD" else None
            items += [(f"{g.role} bundle {i} {_fmt(b)}", b, spread) for i, b in enumerate(g.bundles)]
    orders = [
        sorted(items, key=lambda it: (-_scarce(it[1]), -it[1].get("CPU", 0.0))),
        sorted(items, key=lambda it: (-it[1].get("CPU", 0.0), -_scarce(it[1]))),
        items,
    ]
    attempts = [_pack(order, nodes) for order in orders]
    if all(attempts):
        raise ClusterTooSmall(describe_shortfall(plan, nodes, attempts[0]))


def actor_options(resources: dict[str, float]) -> dict:
    """A role's actor resources ({"CPU": .., "GPU": .., custom: ..}) as Ray's `.options(...)` keywords."""
    resources = dict(resources)
    opts: dict = {"num_cpus": resources.pop("CPU", 0.0)}
    if "GPU" in resources:
        opts["num_gpus"] = resources.pop("GPU")
    if resources:
        opts["resources"] = resources
    return opts


def describe_shortfall(plan: dict[str, RolePlacement], nodes: list[dict[str, float]], unplaced: list[str]) -> str:
    asked: dict[str, float] = {}
    lines = ["the Ray cluster is too small for this placement.", "asked for:"]
    for g in plan.values():
        if g.bundles:
            sizes = [(b, sum(1 for x in g.bundles if x == b)) for i, b in enumerate(g.bundles) if b not in g.bundles[:i]]
            lines.append(f"  {g.role}: {' + '.join(f'{n} x {_fmt(b)}' for b, n in sizes)} ({g.strategy})")
            for b in g.bundles:
                _add(asked, b)
        elif g.shares_group_of:
            lines.append(f"  {g.role}: shares the {g.shares_group_of} bundles (colocated)")
    lines.append(f"  total {_fmt(asked)}")
    have: dict[str, float] = {}
    lines.append(f"available ({len(nodes)} node{'s' if len(nodes) != 1 else ''}):")
    for i, n in enumerate(nodes):
        shown = {k: v for k, v in n.items() if not k.startswith(("node:", "memory", "object_store_memory"))}
        lines.append(f"  node {i}: {_fmt(shown)}")
        _add(have, shown)
    lines.append(f"  total {_fmt(have)}")
    shown = unplaced[:4] + ([f"and {len(unplaced) - 4} more"] if len(unplaced) > 4 else [])
    lines.append("could not place: " + "; ".join(shown))
    lines.append("Use a smaller cluster config (cluster.num_learners, cluster.num_engines, ...) or add nodes.")
    return "\n".join(lines)


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


class Placement:
    """The placement groups of one run, and the Ray options that put actor i of a role in bundle i."""

    def __init__(self, plan: dict[str, RolePlacement], timeout_s: float = 120.0, groups: dict | None = None):
        """``groups``: placement groups already reserved for some roles (kept from a previous run
        with the same bundles); the others are reserved here."""
        from ray.util.placement_group import placement_group

        self.plan = plan
        self.groups = dict(groups or {})
        check_fits(plan, cluster_nodes())
        for role, rp in plan.items():
            if rp.bundles and role not in self.groups:
                self.groups[role] = placement_group(rp.bundles, strategy=rp.strategy, name="")
        pending = [pg.ready() for pg in self.groups.values()]
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
        if len(ready) < len(pending):
            self.remove()
            raise ClusterTooSmall(
                describe_shortfall(plan, cluster_nodes(), [f"placement groups not ready after {timeout_s:.0f} s (resources held by other jobs?)"])
            )

    def options(self, role: str, index: int) -> dict:
        """`.options(**...)` for actor `index` of `role`."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        rp = self.plan[role]
        group = self.groups[rp.shares_group_of or role]
        return {**actor_options(rp.actor), "scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)}

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups.values():
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        self.groups = {}


@ray.remote(num_cpus=0)
def node_address() -> tuple[str, int]:
    """(IP, free TCP port) of the node this task runs on: the rendezvous of a torch process group."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def rendezvous(placement: Placement, role: str, index: int = 0) -> tuple[str, int]:
    """Address for a process group whose rank 0 is actor `index` of `role`."""
    opts = placement.options(role, index)
    return ray.get(node_address.options(scheduling_strategy=opts["scheduling_strategy"]).remote())
