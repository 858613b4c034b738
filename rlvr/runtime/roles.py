"""The roles of a run as Ray actors: Ray start-up, the config of each actor, start, restart, stop.

`start_roles` reserves the placement (`rlvr.runtime.placement`) and starts the verifier pool, the value
server (V0.5 only), the rollout engines and the learner ranks, and connects the weight sync;
`running_roles` stops them again when the run ends, since the Ray session may be shared. The
roles that outlive their actor are replaced as `rlvr.runtime.faults` describes; the learners restart here
(`restart_learners`), and the loop goes back to its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from omegaconf import DictConfig, OmegaConf
from ray.util.placement_group import remove_placement_group

from rlvr.config import fill
from rlvr.learner.actor import LearnerConfig, PolicyLearner
from rlvr.lora import LoraSettings
from rlvr.models import default_cache_dir
from rlvr.rollout.engines import EngineConfig
from rlvr.rollout.pool import RolloutEngine, RolloutPool
from rlvr.runtime.faults import RestartingRole, RestartPolicy, RoleFailed, last_line
from rlvr.runtime.logs import ACTOR_LOG_ENV, actor_log_env
from rlvr.runtime.placement import Placement, plan_placement, rendezvous
from rlvr.runtime.sizing import kv_cache_gb
from rlvr.sandbox.messages import VerifierStartError
from rlvr.weight_sync import Deadlines, connect, sync_weights

log = logging.getLogger("rlvr")


def start_ray(cfg: DictConfig) -> None:
    if ray.is_initialized():
        return
    from rlvr.runtime.logs import ConsoleFilter

    for handler in logging.getLogger("ray").handlers:  # Ray prints through its own handlers
        handler.addFilter(ConsoleFilter(cfg.logging.verbose))
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    env = {
        # DeepSpeed JIT-compiles a comm op once (~30 s); cache it across runs.
        "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for actors that asked for no GPU, so they would
        # all see (and allocate on) GPU 0; this restores "no GPU asked, no GPU visible".
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
    }
    # cluster.address, else RAY_ADDRESS (set by `ray job submit` and scripts/launch_ray_cluster.sh),
    # else a fresh local Ray ("local": given None, Ray joins whatever cluster /tmp/ray last recorded,
    # such as another job's `ray start` on this machine)
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(
        address=address or "local",
        num_cpus=cfg.cluster.num_cpus if address is None else None,
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": env},
    )
    try:
        try:
            ray.init(**kwargs)
        except ConnectionError:
            # A head started by `ray start` that found a token (~/.ray/auth_token) requires it, but a
            # joining driver sends it only in token mode. Switch that on (Ray's helper does it only
            # when a token exists and RAY_AUTH_MODE is unset) and try once more.
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available,
            )

            if address is None or "RAY_AUTH_MODE" in os.environ or not maybe_enable_token_auth_if_token_available(False):
                raise
            ray.shutdown()
            ray.init(**kwargs)
    except ConnectionError as e:
        raise ConnectionError(
            f"cannot join the Ray cluster at {address!r} (cluster.address, else RAY_ADDRESS): {e}. Start one with "
            "scripts/launch_ray_cluster.sh head (docs/cluster.md), or run on this machine alone with cluster=local."
        ) from e


def threads_env(cfg: DictConfig) -> dict:
    """Runtime env for the torch actors. Ray starts actors with OMP_NUM_THREADS=1, and vLLM's CPU
    backend keeps torch at that: half the throughput of 2 threads on this box (~215 vs ~370 tokens/s)."""
    return {"env_vars": {"OMP_NUM_THREADS": str(cfg.rollout.threads)}}


def actor_env(cfg: DictConfig, role: str, index: int = 0, torch_threads: bool = False) -> dict:
    """An actor's runtime env: its output to run_dir/logs/<role>-<index>.log unless logging.verbose,
    and the torch threads for the roles that compute."""
    env = dict(threads_env(cfg)["env_vars"]) if torch_threads else {}
    env.update(actor_log_env(cfg.run_dir, role, index, cfg.logging.verbose))
    return {"env_vars": env}


def engine_config(cfg: DictConfig, model_path: str, size_auto_cache: bool = True) -> EngineConfig:
    """The engine's settings; with `size_auto_cache=False` a cache of `auto` stays 0 (`engine_key`)."""
    sized = cfg.rollout.backend == "vllm" and (size_auto_cache or cfg.rollout.kv_cache_gb != "auto")
    return fill(
        EngineConfig, cfg.rollout, cfg.model,
        model_path=model_path,
        dtype=cfg.model.rollout_dtype,
        kv_cache_gb=kv_cache_gb(cfg, model_path) if sized else 0.0,
        seed=cfg.seed,
        tensor_parallel=cfg.cluster.tensor_parallel,
        sleep_mode=cfg.cluster.mode == "colocated",
    )


def learner_config(cfg: DictConfig, model_path: str) -> LearnerConfig:
    return fill(
        LearnerConfig, cfg.learner, cfg.model,
        model_path=model_path,
        zero_stage=cfg.cluster.zero_stage,
        threads=cfg.rollout.threads,
        seed=cfg.seed,
        lora=LoraSettings.from_config(cfg.model.lora),
        total_optimizer_steps=cfg.trainer.steps * cfg.learner.mini_batches * cfg.learner.epochs,
    )


@dataclass
class Roles:
    """One run's actors. The verifier pool and the value server replace their actor when it dies
    (`RestartingRole`), the rollout pool its engines; the learners restart together, through
    `restart_learners` and `learner_restarts`, and the loop goes back to its last checkpoint."""

    placement: Placement
    learner_restarts: RestartPolicy
    keys: dict  # role -> its `KeptRole` key (`cluster.keep_roles`)
    verifier: RestartingRole | None = None
    value: RestartingRole | None = None  # only for V0.5's adaptive sampling
    rollout: RolloutPool = field(default_factory=lambda: RolloutPool([]))
    learners: list = field(default_factory=list)  # one actor per rank; replaced in place, so every holder sees new ones
    # Held by whoever calls every learner rank: a step's update and sync, a checkpoint's save, an
    # async run's generating thread reloading a replacement engine. Two threads' calls could reach
    # the ranks in opposite orders (a hang under ZeRO's collectives), and a reload queued behind an
    # update exported that update's weights under the version before it.
    learners_busy: threading.RLock = field(default_factory=threading.RLock)


def role_plan(cfg: DictConfig, preset) -> dict:
    """The placement of this run's roles (the ValueServer only for V0.5's adaptive sampling)."""
    return plan_placement(cfg.cluster, with_value=preset.uses_value_model)


def start_roles(cfg: DictConfig, model_path: str, preset) -> Roles:
    """Reserve the placement groups, then create the four pools (or reset those kept from the
    previous run, `cluster.keep_roles`). Returns their handles.

    A cluster too small for `cfg.cluster` fails in `Placement`, before any model loads.
    """
    c = cfg.cluster
    plan = role_plan(cfg, preset)
    keys = role_keys(cfg, plan, model_path)
    kept = claim_kept(keys)
    placement = Placement(plan, timeout_s=c.placement_timeout_s, groups={r: k.group for r, k in kept.items()})
    roles = Roles(placement, RestartPolicy("learner", cfg.trainer.max_restarts, c.placement_timeout_s), keys)
    reused = {r: k.actors for r, k in kept.items()}
    started = time.perf_counter()  # tens of seconds even for a tiny model, whose actors log to run_dir/logs/
    log.info("starting the roles: %d engine(s), %d learner(s), the verifier pool%s%s", c.num_engines, c.num_learners,
             ", the value server" if preset.uses_value_model else "", f" ({', '.join(sorted(reused))} kept from the last run)" if reused else "")
    try:
        # The verifier pool and the value server are replaced, in the same bundle, if they die.
        roles.verifier = verifier_role(cfg, dict(**placement.options("verifier", 0), runtime_env=actor_env(cfg, "verifier")),
                                          actor=reused.get("verifier", [None])[0])
        if preset.uses_value_model:
            from rlvr.value import ValueServer, value_model_kwargs

            roles.value = RestartingRole(
                "value",
                lambda: ValueServer.options(**placement.options("value", 0), runtime_env=actor_env(cfg, "value")).remote(
                    backend=cfg.value.backend, **value_model_kwargs(cfg.value)
                ),
                cfg.trainer.max_restarts,
                snapshot_method="state_dict",
                restore_method="load_state_dict",
                ready_timeout_s=c.placement_timeout_s,
                call_timeout_s=cfg.trainer.role_timeout_s,
                actor=reused.get("value", [None])[0],
            )
        engine_cfg = engine_config(cfg, model_path)

        def start_engine(i: int):
            return RolloutEngine.options(**placement.options("rollout", i), runtime_env=actor_env(cfg, "rollout", i, True)).remote(engine_cfg)

        roles.rollout = RolloutPool(
            reused.get("rollout") or [start_engine(i) for i in range(c.num_engines)], start_engine, cfg.trainer.max_restarts,
            cfg.rollout.timeout_s, c.placement_timeout_s, learner_timeout_s=cfg.trainer.role_timeout_s
        )
        if c.mode == "colocated":
            # vLLM sizes its KV cache from the free device memory at start-up: let it start before
            # the learner sharing its device loads anything.
            ray.get([e.weight_version.remote() for e in roles.rollout.engines])
        roles.learners = reused.get("learner") or start_learners(cfg, placement, model_path)
        if reused:
            reset_kept(cfg, roles, reused, model_path)
        # Surface start-up errors (a bad model folder, an engine that cannot start, a value model
        # that does not load) before step 1.
        value_ready = [roles.value.actor.ready.remote()] if roles.value is not None else []
        verifier_ready = [roles.verifier.actor.__ray_ready__.remote()]
        try:
            ray.get([e.weight_version.remote() for e in roles.rollout.engines] + [l.__ray_ready__.remote() for l in roles.learners]
                    + value_ready + verifier_ready)
        except ray.exceptions.RayActorError as e:
            raise verifier_start_error(e) or e
        if not reused:
            connect(c.weight_sync, roles.learners, roles.rollout.engines, rendezvous(placement, "learner") if c.weight_sync == "nccl" else None)
        # a replacement reloads once any update and sync under way are done, so `version` names the weights it gets
        roles.rollout.reload_lock = roles.learners_busy
        roles.rollout.reload = lambda engine: reload_engine(c.weight_sync, roles.learners, engine, roles.rollout.version,
                                                            cfg.trainer.role_timeout_s)
    except ray.exceptions.RayActorError as e:
        stop_roles(roles)
        if not reused:
            raise
        log.warning("a role kept from the previous run died (%s); starting every role anew", type(e).__name__)
        return start_roles(cfg, model_path, preset)
    except BaseException:
        stop_roles(roles)
        raise
    log.info("roles ready in %.1f s", time.perf_counter() - started)
    return roles


# -- roles kept for the next run of this process (cluster.keep_roles) ------------------------------
# An actor's start imports torch and vLLM or DeepSpeed and loads its model: about 15 of a tiny run's
# 20 s on 2 cores. A process that trains several times (a sweep, the learning-rate search, the test
# suite) can keep each role's actors, with their placement group, for the next run whose role needs
# the same bundles and the same process set-up; `reset` gives each a fresh start first (the weights
# on disk, a new optimizer, a new value model, the new run's log files).
@dataclass
class KeptRole:
    key: tuple
    group: Any  # the role's placement group
    actors: list
    session: str  # the Ray session they live in


_kept: dict[str, KeptRole] = {}


def engine_key(cfg: DictConfig, model_path: str) -> EngineConfig:
    """What a kept engine must share with this run's. A cache sized by `auto` is left out: it
    differs between jobs whose largest generate call differs, and an engine whose cache is smaller
    than a job's call only runs fewer sequences at once (it always holds one of max_model_len)."""
    return engine_config(cfg, model_path, size_auto_cache=False)


def role_keys(cfg: DictConfig, plan: dict, model_path: str) -> dict[str, tuple]:
    """What a kept role must share with this run's to be reused: its bundles, the actors' runtime
    env and what each actor fixes when it starts (`reset` sets the rest). Empty without
    `cluster.keep_roles`, and where a role shares a group or a process group with another
    (colocated mode, the nccl weight sync)."""
    c = cfg.cluster
    if not c.keep_roles or c.mode == "colocated" or c.weight_sync == "nccl":
        return {}

    def same(role: str, *fixed) -> tuple:
        return (repr(plan[role]), cfg.rollout.threads, bool(cfg.logging.verbose), *fixed)

    keys = {
        "verifier": same("verifier", repr(OmegaConf.to_container(cfg.verifier, resolve=True)), tuple(environment_tools(cfg))),
        "rollout": same("rollout", repr(engine_key(cfg, model_path))),
        # the process group's size and ZeRO's partitioning; the model, optimizer and seed are reset
        "learner": same("learner", c.zero_stage),
    }
    if "value" in plan:
        from rlvr.value import value_model_kwargs

        keys["value"] = same("value", cfg.value.backend, repr(value_model_kwargs(cfg.value)))
    return keys


def ray_session() -> str:
    return ray.get_runtime_context().get_session_name()


def claim_kept(keys: dict[str, tuple]) -> dict[str, KeptRole]:
    """The kept roles this run can reuse (same key); the others are stopped, since they hold memory
    and bundles. Roles kept in a Ray session since shut down are gone already."""
    kept = dict(_kept)
    _kept.clear()
    if not ray.is_initialized():
        return {}
    session = ray_session()
    kept = {r: k for r, k in kept.items() if k.session == session}
    claimed = {r: k for r, k in kept.items() if keys.get(r) == k.key}
    for r, k in kept.items():
        if r not in claimed:
            kill_actors(k.actors)
            remove_placement_group(k.group)
    return claimed


def release_kept_roles() -> None:
    """Stop the roles kept by the last run of this process (`cluster.keep_roles`)."""
    claim_kept({})


def reset_kept(cfg: DictConfig, roles: Roles, reused: dict[str, list], model_path: str) -> None:
    """Give each reused actor its fresh start for this run, all at once."""
    def log_path(role: str, i: int) -> str | None:
        return actor_env(cfg, role, i)["env_vars"].get(ACTOR_LOG_ENV)

    calls = [a.reset.remote(log_path(role, i)) for role in ("verifier", "value", "rollout") for i, a in enumerate(reused.get(role, []))]
    learner_cfg = learner_config(cfg, model_path)
    calls += [l.reset.remote(learner_cfg, log_path("learner", rank)) for rank, l in enumerate(reused.get("learner", []))]
    ray.get(calls, timeout=cfg.cluster.placement_timeout_s)
    log.info("reused the %s kept from the previous run", ", ".join(sorted(reused)))


def environment_tools(cfg: DictConfig) -> list[str]:
    """The tools of `env` (its class's own, plus `env.tools`): the verifier pool runs their calls."""
    if cfg.env.name == "none":
        return []
    from rlvr.envs import environment_from_config

    return environment_from_config(cfg.env).tools


def verifier_start_error(e: BaseException) -> VerifierStartError | None:
    """The verifier pool's start-up failure (a reward function that does not import, a sandbox
    that cannot start) as a message naming it: found at step 0, it was restarted as a death
    `trainer.max_restarts` times and ended in a RoleFailed that named no cause."""
    if "VerifierStartError" not in str(e):
        return None
    return VerifierStartError(f"the verifier pool did not start: {last_line(e)} (verifier.terms, or its sandbox; "
                              "the whole traceback is in the run's logs/verifier-0.log)")


def verifier_role(cfg: DictConfig, actor_options: dict, actor=None) -> RestartingRole:
    """The verifier pool as `verifier.*` configures it, replaced (with the same options) if it dies:
    the one place a run and `rlvr eval` make it."""
    from rlvr.sandbox.actor import VerifierPool

    v = cfg.verifier
    return RestartingRole(
        "verifier",
        lambda: VerifierPool.options(**actor_options).remote(
            OmegaConf.to_container(v.terms), num_workers=v.num_workers, timeout_s=v.timeout_s, memory_mb=v.memory_mb,
            tools=environment_tools(cfg),
        ),
        cfg.trainer.max_restarts,
        ready_timeout_s=cfg.cluster.placement_timeout_s,
        call_timeout_s=cfg.trainer.role_timeout_s,
        actor=actor,
    )


def start_learners(cfg: DictConfig, placement: Placement, model_path: str) -> list:
    c = cfg.cluster
    learner_cfg = learner_config(cfg, model_path)
    host, port = rendezvous(placement, "learner")  # torch.distributed rendezvous on rank 0's node
    return [
        PolicyLearner.options(**placement.options("learner", rank), runtime_env=actor_env(cfg, "learner", rank, True)).remote(
            learner_cfg, rank, c.num_learners, host, port
        )
        for rank in range(c.num_learners)
    ]


# What a step's call raises when a learner rank is lost: its actor died, it was silent past its
# deadline, or (the `ray` weight sync) the buckets it owned went with it while engines still read them.
LEARNER_LOSS_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError, ray.exceptions.ObjectLostError)


def learners_lost(learners: list) -> bool:
    try:
        ray.get([l.__ray_ready__.remote() for l in learners], timeout=60)
        return False
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return True


def restart_learners(cfg: DictConfig, roles: Roles, model_path: str, error: BaseException) -> None:
    """Every learner rank anew (optimizer state lived in their memory), charged to `roles.learner_restarts`:
    the caller reloads a checkpoint."""
    if cfg.cluster.weight_sync == "nccl":
        raise RoleFailed("a learner rank died; restarting the learners needs cluster.weight_sync=ray or ipc (the nccl group with the engines cannot be re-formed)")
    policy = roles.learner_restarts
    policy.charge("a learner rank", None, error)
    roles.learners[:] = policy.replace(roles.learners, lambda: start_learners(cfg, roles.placement, model_path))  # in place
    policy.await_ready(roles.learners, "the learner ranks")


def reload_engine(backend: str, learners: list, engine, version: int, timeout_s: float | None) -> None:
    """A replacement engine gets the learners' current weights through the object store: it was
    in no process group, and the ipc backend hands weights over the same way at every sync.

    `timeout_s` (`trainer.role_timeout_s`, not the generate deadline: a new engine's first load
    may include its warm-up) bounds both sides; a replacement that does not load stops the run.
    """
    if backend == "nccl":
        raise RoleFailed("a rollout engine died; replacing it needs cluster.weight_sync=ray or ipc (the nccl group cannot take a new member)")

    def lost(failures: dict[int, BaseException], since: float) -> None:
        raise RoleFailed(f"a replacement rollout engine did not load the weights: {failures[0]}")

    sync_weights("ray", learners, [engine], version=version, deadlines=Deadlines(timeout_s, timeout_s, "trainer.role_timeout_s"), on_failure=lost)


@contextlib.contextmanager
def running_roles(cfg: DictConfig, model_path: str, preset):
    """The roles of one run; their actors are killed on exit (the Ray session may be shared), or
    kept for the next run with `cluster.keep_roles` when this one ends without an error."""
    roles = start_roles(cfg, model_path, preset)
    try:
        yield roles
    except BaseException:
        stop_roles(roles)
        raise
    stop_roles(roles, keep=True)


def stop_roles(roles: Roles, keep: bool = False) -> None:
    """Kill the run's actors and free its bundles; with ``keep``, the roles that have a key
    (`role_keys`) are kept instead, for the next run of this process."""
    keys = roles.keys if keep else {}
    actors = {
        "verifier": [roles.verifier.actor] if roles.verifier is not None else [],
        "value": [roles.value.actor] if roles.value is not None else [],
        "rollout": list(roles.rollout.engines),
        "learner": list(roles.learners),
    }
    placement = roles.placement
    for role, handles in actors.items():
        if role in keys and handles and role in placement.groups:
            _kept[role] = KeptRole(keys[role], placement.groups.pop(role), handles, ray_session())
            continue
        if role == "verifier" and handles:
            try:
                ray.get(handles[0].close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - best effort: the actor is killed next anyway
                pass
        kill_actors(handles)
    placement.remove()


def kill_actors(handles: list) -> None:
    for h in handles:
        if h is not None:
            ray.kill(h)


def fault_metrics(roles: Roles) -> dict:
    """Restarts so far per role, and the seconds the run spent replacing actors (for the learners:
    restarting them and going back to the checkpoint, not the steps trained again)."""
    policies = [r.policy for r in (roles.verifier, roles.value, roles.rollout) if r is not None] + [roles.learner_restarts]
    out = {f"faults/{p.role}_restarts": p.restarts for p in policies}
    out["faults/seconds_lost"] = sum(p.seconds_lost for p in policies)
    return out
