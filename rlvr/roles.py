"""The roles of a run as Ray actors: Ray start-up, the config of each actor, start, restart, stop.

`start_roles` reserves the placement (`rlvr.placement`) and starts the verifier pool, the value
server (V0.5 only), the rollout engines and the learner ranks, and connects the weight sync;
`running_roles` stops them again when the run ends, since the Ray session may be shared. The
roles that outlive their actor are replaced as `rlvr.faults` describes; the learners restart here
(`restart_learners`), and the loop goes back to its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import ray
from omegaconf import DictConfig, OmegaConf

from rlvr.faults import RestartingRole, RoleFailed
from rlvr.learner import LearnerConfig, PolicyLearner
from rlvr.logs import actor_log_env
from rlvr.lora import LoraSettings
from rlvr.models import default_cache_dir
from rlvr.placement import Placement, plan_placement, rendezvous
from rlvr.rollout import EngineConfig, RolloutEngine, RolloutPool
from rlvr.weight_sync import connect, sync_weights

log = logging.getLogger("rlvr")


def start_ray(cfg: DictConfig) -> None:
    if ray.is_initialized():
        return
    from rlvr.logs import ConsoleFilter

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
    # else a fresh local Ray
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(
        address=address,
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


def engine_config(cfg: DictConfig, model_path: str) -> EngineConfig:
    return EngineConfig(
        backend=cfg.rollout.backend,
        model_path=model_path,
        dtype=cfg.model.dtype,
        max_model_len=cfg.model.max_model_len,
        kv_cache_gb=cfg.rollout.kv_cache_gb,
        seed=cfg.seed,
        threads=cfg.rollout.threads,
        tensor_parallel=cfg.cluster.tensor_parallel,
        sleep_mode=cfg.cluster.mode == "colocated",
    )


def learner_config(cfg: DictConfig, model_path: str) -> LearnerConfig:
    return LearnerConfig(
        model_path=model_path,
        zero_stage=cfg.cluster.zero_stage,
        lr=cfg.learner.lr,
        weight_decay=cfg.learner.weight_decay,
        grad_clip=cfg.learner.grad_clip,
        micro_batch_size=cfg.learner.micro_batch_size,
        gradient_checkpointing=cfg.learner.gradient_checkpointing,
        share_prompts=cfg.learner.share_prompts,
        threads=cfg.rollout.threads,
        seed=cfg.seed,
        dtype=cfg.model.dtype,
        train_dtype=cfg.model.train_dtype,
        bucket_mb=cfg.learner.bucket_mb,
        lora=LoraSettings.from_config(cfg.model.lora),
    )


def role_plan(cfg: DictConfig, preset) -> dict:
    """The placement of this run's roles (the ValueServer only for V0.5's adaptive sampling)."""
    return plan_placement(cfg.cluster, with_value=preset.sampling == "adaptive")


def start_roles(cfg: DictConfig, model_path: str, preset) -> dict:
    """Reserve the placement groups, then create the four pools. Returns their handles.

    A cluster too small for `cfg.cluster` fails in `Placement`, before any model loads.
    """
    c = cfg.cluster
    placement = Placement(role_plan(cfg, preset), timeout_s=c.placement_timeout_s)
    roles: dict = {"placement": placement, "verifier": None, "value": None, "rollout": RolloutPool([]), "learners": []}
    try:
        # The verifier pool and the value server are replaced, in the same bundle, if they die.
        roles["verifier"] = verifier_role(cfg, dict(**placement.options("verifier", 0), runtime_env=actor_env(cfg, "verifier")))
        if preset.sampling == "adaptive":
            from rlvr.value import ValueServer, value_model_kwargs

            roles["value"] = RestartingRole(
                "value",
                lambda: ValueServer.options(**placement.options("value", 0), runtime_env=actor_env(cfg, "value")).remote(
                    backend=cfg.value.backend, **value_model_kwargs(cfg.value)
                ),
                cfg.trainer.max_restarts,
                snapshot_method="state_dict",
                restore_method="load_state_dict",
                ready_timeout_s=c.placement_timeout_s,
            )
        engine_cfg = engine_config(cfg, model_path)

        def start_engine(i: int):
            return RolloutEngine.options(**placement.options("rollout", i), runtime_env=actor_env(cfg, "rollout", i, True)).remote(engine_cfg)

        roles["rollout"] = RolloutPool(
            [start_engine(i) for i in range(c.num_engines)], start_engine, cfg.trainer.max_restarts, cfg.rollout.timeout_s, c.placement_timeout_s
        )
        if c.mode == "colocated":
            # vLLM sizes its KV cache from the free device memory at start-up: let it start before
            # the learner sharing its device loads anything.
            ray.get([e.weight_version.remote() for e in roles["rollout"].engines])
        roles["learners"] = start_learners(cfg, placement, model_path)
        # Surface start-up errors (a bad model folder, an engine that cannot start, a value model
        # that does not load) before step 1.
        value_ready = [roles["value"].actor.ready.remote()] if roles["value"] is not None else []
        ray.get([e.weight_version.remote() for e in roles["rollout"].engines] + [l.__ray_ready__.remote() for l in roles["learners"]] + value_ready)
        connect(c.weight_sync, roles["learners"], roles["rollout"].engines, rendezvous(placement, "learner") if c.weight_sync == "nccl" else None)
        roles["rollout"].reload = lambda engine: reload_engine(c.weight_sync, roles["learners"], engine, roles["rollout"].version)
    except BaseException:
        stop_roles(roles)
        raise
    return roles


def environment_tools(cfg: DictConfig) -> list[str]:
    """The tools of `env` (its class's own, plus `env.tools`): the verifier pool runs their calls."""
    if cfg.env.name == "none":
        return []
    from rlvr.envs import environment_from_config

    return environment_from_config(cfg.env).tools


def verifier_role(cfg: DictConfig, actor_options: dict) -> RestartingRole:
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


def learners_lost(learners: list) -> bool:
    try:
        ray.get([l.__ray_ready__.remote() for l in learners], timeout=60)
        return False
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return True


def restart_learners(cfg: DictConfig, roles: dict, model_path: str) -> None:
    """Every learner rank anew (optimizer state lived in their memory): the caller reloads a checkpoint."""
    if cfg.cluster.weight_sync == "nccl":
        raise RoleFailed("a learner rank died; restarting the learners needs cluster.weight_sync=ray or ipc (the nccl group with the engines cannot be re-formed)")
    for l in roles["learners"]:
        ray.kill(l)
    roles["learners"][:] = start_learners(cfg, roles["placement"], model_path)  # in place: every holder sees them
    try:
        ray.get([l.__ray_ready__.remote() for l in roles["learners"]], timeout=cfg.cluster.placement_timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        raise RoleFailed(
            f"the learner ranks did not start again within cluster.placement_timeout_s={cfg.cluster.placement_timeout_s}: "
            "no node has room for their bundles (was their node lost?)"
        ) from e


def reload_engine(backend: str, learners: list, engine, version: int) -> None:
    """A replacement engine gets the learners' current weights through the object store: it was
    in no process group, and the ipc backend hands weights over the same way at every sync."""
    if backend == "nccl":
        raise RoleFailed("a rollout engine died; replacing it needs cluster.weight_sync=ray or ipc (the nccl group cannot take a new member)")
    sync_weights("ray", learners, [engine], version=version)


@contextlib.contextmanager
def running_roles(cfg: DictConfig, model_path: str, preset):
    """The roles of one run; their actors are killed on exit (the Ray session may be shared)."""
    roles = start_roles(cfg, model_path, preset)
    try:
        yield roles
    finally:
        stop_roles(roles)


def stop_roles(roles: dict) -> None:
    if roles["verifier"] is not None:
        try:
            ray.get(roles["verifier"].actor.close.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - best effort: the actor is killed next anyway
            pass
    handles = [r.actor for r in (roles["verifier"], roles["value"]) if r is not None] + [*roles["rollout"].engines, *roles["learners"]]
    for h in handles:
        if h is not None:
            ray.kill(h)
    roles["placement"].remove()


def fault_metrics(roles: dict, learner_faults: dict) -> dict:
    """Restarts so far per role, and the seconds the run spent replacing actors (for the learners:
    restarting them and going back to the checkpoint, not the steps trained again)."""
    restartable = [r for r in (roles["verifier"], roles["value"], roles["rollout"]) if r is not None]
    out = {f"faults/{r.name}_restarts": r.restarts for r in restartable}
    out["faults/learner_restarts"] = learner_faults["restarts"]
    out["faults/seconds_lost"] = sum(r.seconds_lost for r in restartable) + learner_faults["seconds_lost"]
    return out
