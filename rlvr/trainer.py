"""The training loop, top to bottom in one file.

    prompts -> BudgetController (rollouts, rewards, V0.5 baselines) -> Batch
            -> train_step: advantages (+ weighting) -> PolicyLearners (mini-batch updates with a
               real π_old and the rollout correction) -> weight sync to the RolloutPool
            -> metrics, evaluation, checkpoint

Two drivers feed `train_step` the same `Batch`: `sync_batches` (generate, then train: exact
resume) and `AsyncBatches` (trainer.max_staleness >= 1: the next batch is generated while this one
trains). `train(cfg)` takes the composed Hydra config (see `rlvr.config.compose`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import queue
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import ray
import torch
from omegaconf import DictConfig, OmegaConf

from rlvr.algorithms import HADWState, apply_weighting, compute_advantages, pass_at_k
from rlvr.checkpoint import resolve_resume, save_checkpoint
from rlvr.config import ConfigError, algorithm_preset, overlong_buffer, validate
from rlvr.batch import Batch, Trajectory, plan_mini_batches
from rlvr.controller import BudgetController, ControllerConfig
from rlvr.data import Problem, PromptStream, build_messages, load_problems
from rlvr.faults import RestartingRole, RoleFailed
from rlvr.learner import LearnerConfig, PolicyLearner, UpdateConfig
from rlvr.logs import actor_log_env
from rlvr.lora import BEFORE_LORA, LoraSettings
from rlvr.models import default_cache_dir, resolve_model_path
from rlvr.placement import Placement, check_fits, cluster_nodes, plan_placement, rendezvous
from rlvr.rollout import EngineConfig, GenerationRequest, RolloutEngine, RolloutPool, SamplingConfig
from rlvr.weight_sync import connect, sync_weights

log = logging.getLogger("rlvr")


# --------------------------------------------------------------------------------------------
# Set-up: every role as Ray actors
# --------------------------------------------------------------------------------------------
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
            from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

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


def update_config(cfg: DictConfig, preset) -> UpdateConfig:
    return UpdateConfig(
        loss=preset.loss,
        agg=preset.agg,
        loss_kwargs=preset.loss_kwargs(),
        kl_coef=preset.kl_coef,
        kl_estimator=preset.kl_estimator,
        max_len=cfg.rollout.max_tokens,
        temperature=cfg.rollout.temperature,
        epochs=cfg.learner.epochs,
        old_logprobs=preset.old_logprobs,
        rollout_correction=preset.rollout_correction,
        correction_threshold=preset.correction_threshold,
    )


def controller_config(cfg: DictConfig, preset) -> ControllerConfig:
    a = cfg.algorithm
    return ControllerConfig(
        sampling=preset.sampling,
        n=a.n,
        delta=a.delta,
        n_max=a.n_max,
        kappa=a.kappa,
        budget_factor=a.budget_factor,
        adaptive_rounds=a.adaptive_rounds,
        calibration_window=a.calibration_window,
        use_uncertainty=a.use_uncertainty,
        max_rounds=a.max_rounds,
        filter_metric=preset.filter_metric,
        overlong=preset.overlong,
        overlong_buffer=overlong_buffer(cfg),
    )


def prompt_renderer(cfg: DictConfig, model_path: str):
    """Problem -> prompt text: system prompt, few-shot turns and question through the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    fewshot = OmegaConf.to_container(cfg.data.fewshot, resolve=True) if cfg.data.fewshot else None

    def render(problem: Problem) -> str:
        messages = build_messages(problem, cfg.data.system_prompt, fewshot)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return render


def role_plan(cfg: DictConfig, preset) -> dict:
    """The placement of this run's roles (the ValueServer only for V0.5's adaptive sampling)."""
    return plan_placement(cfg.cluster, with_value=preset.sampling == "adaptive")


def start_roles(cfg: DictConfig, model_path: str, preset) -> dict:
    """Reserve the placement groups, then create the four pools. Returns their handles.

    A cluster too small for `cfg.cluster` fails in `Placement`, before any model loads.
    """
    from rlvr.verifier import VerifierPool

    c = cfg.cluster
    placement = Placement(role_plan(cfg, preset), timeout_s=c.placement_timeout_s)
    roles: dict = {"placement": placement, "verifier": None, "value": None, "rollout": RolloutPool([]), "learners": []}
    try:
        # The verifier pool and the value server are replaced, in the same bundle, if they die.
        roles["verifier"] = RestartingRole(
            "verifier",
            lambda: VerifierPool.options(**placement.options("verifier", 0), runtime_env=actor_env(cfg, "verifier")).remote(
                OmegaConf.to_container(cfg.verifier.terms),
                num_workers=cfg.verifier.num_workers,
                timeout_s=cfg.verifier.timeout_s,
                memory_mb=cfg.verifier.memory_mb,
            ),
            cfg.trainer.max_restarts,
            ready_timeout_s=c.placement_timeout_s,
        )
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


# --------------------------------------------------------------------------------------------
# One step's pieces
# --------------------------------------------------------------------------------------------
def evaluation_problems(cfg: DictConfig, train_problems: list[Problem]) -> list[Problem]:
    """The prompts `evaluate` scores: the held-out split without any training question, or with
    `eval.split=validation` the validation split without any training or held-out question."""
    train = {p.question for p in train_problems}
    eval_split = OmegaConf.to_container(cfg.data.eval, resolve=True)
    if cfg.eval.split == "heldout":
        return load_problems(eval_split, exclude=train)
    # every question the held-out split could ever hold, whatever eval.size, stays out
    heldout = {p.question for p in load_problems({**eval_split, "limit": None}, exclude=train)}
    validation = load_problems(OmegaConf.to_container(cfg.data.validation, resolve=True), exclude=train | heldout)
    log.info("evaluating on the validation split: %d prompts, none of them training or held-out", len(validation))
    return validation


def split_warmup(problems: list[Problem], count: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """(training prompts, V0.5's warm-up prompts): `count` drawn by `seed` and held out of training,
    the same way on every start, so that a resumed run's prompt stream is the original's."""
    if count <= 0:
        return problems, []
    if count >= len(problems):
        raise ConfigError(
            f"algorithm.warmup_prompts: {count} warm-up prompts would leave none of the {len(problems)} training prompts; lower it"
        )
    chosen = set(random.Random(seed).sample(range(len(problems)), count))
    return [p for i, p in enumerate(problems) if i not in chosen], [problems[i] for i in sorted(chosen)]


def hadw_state(weighting: DictConfig) -> HADWState:
    """HA-DW's anchor state from `weighting=hadw`; an unused one for any other weighting."""
    if weighting.name != "hadw":
        return HADWState()
    return HADWState(window=weighting.window, anchor=weighting.anchor, eta=weighting.eta)


def set_advantages(batch: Batch, preset, weighting: DictConfig, hadw_state: HADWState) -> None:
    """Advantages of every trajectory (the estimator on the shaped reward, then the optional
    weighting on correctness: both papers weigh by success rate), on the batch."""
    rewards, group_ids = batch.rewards(), batch.group_ids()
    kwargs = dict(preset.estimator_kwargs())
    if preset.estimator == "v05":
        kwargs["baselines"] = batch.baselines()
    adv = compute_advantages(preset.estimator, rewards, group_ids, **kwargs)
    if weighting.name != "none":
        extra = {"gamma": weighting.gamma} if weighting.name == "focal" else {"state": hadw_state, "lam": weighting.lam}
        weighted = apply_weighting(weighting.name, adv, batch.correctness(), group_ids, **extra)
        moved = adv.abs() > 1e-8  # the weight a rollout got, where its advantage carries one
        factor = weighted[moved] / adv[moved]
        if factor.numel():
            batch.stats.update({"weighting/min": float(factor.min()), "weighting/max": float(factor.max())})
        adv = weighted
    batch.set_advantages(adv)


def trainable(batch: Batch, preset, version: int, max_staleness: int) -> tuple[list[Trajectory], dict]:
    """The trajectories the learners train on: none sampled with weights older than
    `version - max_staleness`, and no truncated one when the preset masks them. Stale ones still
    counted in their group's baseline (their rewards are real); they only leave the loss."""
    keep, stale = [], 0
    for t in batch.trajectories:
        if t.weight_version < version - max_staleness:
            stale += 1
        elif not (preset.mask_truncated and t.truncated):
            keep.append(t.for_learner())
    lags = [version - t.weight_version for t in keep]
    return keep, {"async/stale_dropped": stale, "async/staleness_max": max(lags, default=0)}


def evaluate(
    rollout: RolloutPool,
    verifier,
    problems: list[Problem],
    render,
    cfg: DictConfig,
    seed: int,
    sampled: bool = True,
    per_prompt: list[dict] | None = None,
) -> dict:
    """Held-out accuracy, strict: greedy pass@1, plus unbiased pass@k when eval.n_samples > 1 and
    ``sampled``; per task family too when there are several. ``per_prompt``, when given, receives
    one record per problem (uid, family, greedy correct, sampled successes of n)."""
    if not problems:
        return {}
    from rlvr.verifier import ScoreRequest

    def correct_counts(n: int, sampling: SamplingConfig, seed: int) -> list[int]:
        samples = rollout.generate([GenerationRequest(i, render(p), n) for i, p in enumerate(problems)], sampling, seed)
        requests = [ScoreRequest.for_problem(s.text, problems[s.prompt_index]) for s in samples]
        results, _ = verifier.call("score", requests)
        correct = [0] * len(problems)
        for s, r in zip(samples, results):
            correct[s.prompt_index] += int(r.correct)
        return correct

    families = sorted({p.family for p in problems})

    def by_family(name: str, values: list[float]) -> dict:
        """The metric over all problems, and per task family when there are several."""
        out = {f"eval/{name}": float(np.mean(values))}
        if len(families) > 1:
            for f in families:
                out[f"eval/{name}/{f}"] = float(np.mean([v for v, p in zip(values, problems) if p.family == f]))
        return out

    greedy = correct_counts(1, SamplingConfig(temperature=0.0, max_tokens=cfg.eval.max_tokens), seed)
    metrics = by_family("accuracy", greedy)
    records = [{"uid": p.uid, "family": p.family, "greedy": g} for p, g in zip(problems, greedy)]
    n = cfg.eval.n_samples
    if n > 1 and sampled:
        sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=cfg.eval.max_tokens)
        correct = correct_counts(n, sampling, seed + 1)
        for k in range(1, n + 1):
            metrics.update(by_family(f"pass@{k}", [pass_at_k(n, c, k) for c in correct]))
        for r, c in zip(records, correct):
            r.update(samples=n, successes=c)
    if per_prompt is not None:
        per_prompt.extend(records)
    return metrics


def evaluate_model(target: str, cfg: DictConfig) -> dict:
    """`rlvr eval`: held-out accuracy of a checkpoint (exported to a temp folder first) or a model folder."""
    import tempfile

    from rlvr.export import export_checkpoint
    from rlvr.verifier import VerifierPool

    with tempfile.TemporaryDirectory(prefix="rlvr-eval-") as tmp:
        path = Path(target)
        if (path / "MANIFEST.json").exists():
            model_path = str(export_checkpoint(path, Path(tmp) / "model"))
        else:
            model_path = resolve_model_path(target, cfg.cache_dir)
        problems = load_problems(OmegaConf.to_container(cfg.data.eval, resolve=True))
        render = prompt_renderer(cfg, model_path)

        start_ray(cfg)
        engine = RolloutEngine.options(num_cpus=cfg.cluster.actor_cpus, runtime_env=threads_env(cfg)).remote(
            engine_config(cfg, model_path)
        )
        verifier = RestartingRole(
            "verifier",
            lambda: VerifierPool.options(num_cpus=cfg.cluster.actor_cpus).remote(
                OmegaConf.to_container(cfg.verifier.terms), num_workers=cfg.verifier.num_workers, timeout_s=cfg.verifier.timeout_s
            ),
            cfg.trainer.max_restarts,
        )
        try:
            return evaluate(RolloutPool([engine]), verifier, problems, render, cfg, seed=cfg.seed)
        finally:
            ray.kill(engine)
            verifier.kill()


def step_metrics(batch: Batch, learn: dict) -> dict:
    trajectories = batch.trajectories
    m = {
        "reward": float(np.mean([t.reward for t in trajectories])) if trajectories else float("nan"),
        "accuracy": float(np.mean([t.correct for t in trajectories])) if trajectories else float("nan"),
        "response_length": float(np.mean([len(t.response_ids) for t in trajectories])) if trajectories else 0.0,
        "truncated_frac": float(np.mean([t.truncated for t in trajectories])) if trajectories else 0.0,
        "adv_abs_mean": float(batch.advantages().abs().mean()) if trajectories else 0.0,
        "groups": len(batch.groups),
    }
    m.update(batch.stats)
    m.update({f"learner/{k}": v for k, v in learn.items() if k not in ("seconds",)})
    return m


class MetricsLog:
    """metrics.jsonl in the run directory, plus TensorBoard / wandb when configured."""

    def __init__(self, run_dir: Path, cfg: DictConfig):
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1) if cfg.logging.jsonl else None
        self.decisions = open(run_dir / "decisions.jsonl", "a", buffering=1)
        self.eval = open(run_dir / "eval.jsonl", "a", buffering=1)  # per held-out prompt, for bootstrap CIs
        self.tb = self.wandb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if cfg.logging.wandb:
            import wandb

            self.wandb = wandb.init(
                project=cfg.logging.wandb_project,
                dir=str(run_dir),
                mode=cfg.logging.wandb_mode,
                config=OmegaConf.to_container(cfg, resolve=True),
            )

    def write(self, step: int, metrics: dict, decisions: list[dict] = (), eval_records: list[dict] = ()) -> None:
        record = {"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        if self.file:
            self.file.write(json.dumps(record) + "\n")
        for d in decisions:
            self.decisions.write(json.dumps({"step": step, **d}) + "\n")
        for r in eval_records:
            self.eval.write(json.dumps({"step": step, **r}) + "\n")
        if self.tb:
            for k, v in record.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(record, step=step)

    def close(self) -> None:
        for f in (self.file, self.decisions, self.eval):
            if f:
                f.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def console_line(step: int, total: int, m: dict) -> str:
    t = lambda k: m.get(f"time/{k}", 0.0)  # noqa: E731
    parts = [
        f"step {step}/{total}",
        f"reward {m['reward']:.3f}",
        f"acc {m['accuracy']:.3f}",
    ]
    if "eval/accuracy" in m:
        parts.append(f"heldout {m['eval/accuracy']:.3f}")
    parts += [
        f"rollouts {int(m.get('rollouts', 0))}",
        f"len {m['response_length']:.0f}",
        f"time gen {t('generate'):.1f}s verify {t('verify'):.1f}s value {t('value'):.1f}s "
        f"learn {t('learn'):.1f}s sync {t('sync'):.1f}s",
    ]
    if "v05/accepted" in m:
        parts.append(f"v05 acc/shr/rej {m['v05/accepted']}/{m['v05/shrunk']}/{m['v05/rejected']}")
    if m.get("learner/optimizer_steps", 1) > 1:
        parts.append(f"updates {m['learner/optimizer_steps']} clip lo/hi {m['learner/clip_frac_low']:.3f}/{m['learner/clip_frac_high']:.3f}")
    if m.get("async/stale_dropped"):
        parts.append(f"stale dropped {m['async/stale_dropped']}")
    restarts = {k.split("/")[1].removesuffix("_restarts"): v for k, v in m.items() if k.startswith("faults/") and k.endswith("_restarts") and v}
    if restarts:
        parts.append("restarts " + " ".join(f"{r} {n}" for r, n in restarts.items()) + f" ({m['faults/seconds_lost']:.1f}s lost)")
    return " | ".join(parts)


def fault_metrics(roles: dict, learner_faults: dict) -> dict:
    """Restarts so far per role, and the seconds the run spent replacing actors (for the learners:
    restarting them and going back to the checkpoint, not the steps trained again)."""
    restartable = [r for r in (roles["verifier"], roles["value"], roles["rollout"]) if r is not None]
    out = {f"faults/{r.name}_restarts": r.restarts for r in restartable}
    out["faults/learner_restarts"] = learner_faults["restarts"]
    out["faults/seconds_lost"] = sum(r.seconds_lost for r in restartable) + learner_faults["seconds_lost"]
    return out


# --------------------------------------------------------------------------------------------
# Checkpoints: DeepSpeed shards of every learner rank + the driver's state, saved atomically
# --------------------------------------------------------------------------------------------
GUARDED_KEYS = ("model.path", "model.lora.rank", "model.lora.target_modules", "algorithm.name", "algorithm.estimator", "algorithm.loss", "weighting.name")


def check_resume_config(ckpt: Path, cfg: DictConfig) -> None:
    """Refuse to resume a checkpoint into a different model or algorithm, unless allowed."""
    saved = OmegaConf.load(ckpt / "config.yaml")
    saved_value = lambda k: OmegaConf.select(saved, k, default=BEFORE_LORA.get(k))  # noqa: E731
    changed = [f"{k}: {saved_value(k)!r} -> {OmegaConf.select(cfg, k)!r}" for k in GUARDED_KEYS if saved_value(k) != OmegaConf.select(cfg, k)]
    if changed and not cfg.resume.allow_config_change:
        raise ConfigError(
            f"resume: checkpoint {ckpt} was written with a different config ({'; '.join(changed)}). "
            "Pass resume.allow_config_change=true to resume anyway, or resume=never to start fresh."
        )


def save_training_state(run_dir: Path, step: int, roles: dict, state: dict, cfg: DictConfig) -> Path:
    """`state["value"]`, when given, is the value server's state as of the trained batch (async runs:
    the server has already seen the batches generated ahead); otherwise it is read from the server."""

    def write(tmp: Path) -> None:
        ray.get([l.save_checkpoint.remote(str(tmp / "learner"), "policy") for l in roles["learners"]])
        value_state = state.get("value")
        if value_state is None and roles["value"] is not None:
            value_state = roles["value"].call("state_dict")
        torch.save({**state, "value": value_state}, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    return save_checkpoint(run_dir, step, write, keep=cfg.trainer.keep_checkpoints)


def load_training_state(ckpt: Path, roles: dict) -> dict:
    ray.get([l.load_checkpoint.remote(str(ckpt / "learner"), "policy") for l in roles["learners"]])
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    if roles["value"] is not None and state.get("value") is not None:
        roles["value"].load(state["value"])
    return state


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class StopRequest:
    """SIGTERM/SIGINT ask the loop to checkpoint after the current step and exit; a second one aborts."""

    def __init__(self):
        self.signal: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received %s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# The step, and the two drivers that feed it batches
# --------------------------------------------------------------------------------------------
@dataclass
class StepParts:
    """What `train_step` uses besides the batch: built once per run."""

    cfg: DictConfig
    preset: object
    roles: dict
    update: UpdateConfig
    hadw_state: HADWState


def train_step(parts: StepParts, batch: Batch, step: int) -> dict:
    """Advantages -> mini-batch updates on the learners -> weight sync. Shared by both drivers.

    The learners hold version step-1 on entry and step on return; the engines get step.
    """
    cfg, roles = parts.cfg, parts.roles
    learners, rollout = roles["learners"], roles["rollout"]
    # 2. advantages, then the optional weighting, written onto the batch's trajectories
    set_advantages(batch, parts.preset, cfg.weighting, parts.hadw_state)
    trajectories, async_m = trainable(batch, parts.preset, step - 1, cfg.trainer.max_staleness)
    # 3. learner.mini_batches optimizer steps for each of learner.epochs passes
    colocated = cfg.cluster.mode == "colocated"
    if colocated:
        rollout.sleep()  # hand the shared accelerators to the learners (a no-op on CPU)
    learn_start = time.perf_counter()
    plans = plan_mini_batches(trajectories, cfg.learner.mini_batches, len(learners), cfg.learner.micro_batch_size, seed=cfg.seed * 100003 + step)
    if trajectories:
        learner_metrics = ray.get([l.train_step.remote(plan, parts.update) for l, plan in zip(learners, plans)])[0]
    else:
        log.warning("step %d: no trainable trajectories (%d stale), skipping the update", step, async_m["async/stale_dropped"])
        learner_metrics = {}
    learn_s = time.perf_counter() - learn_start
    if colocated:
        rollout.wake_up()
    # 4. new weights to the rollout engines, bucketed (cluster.weight_sync picks the transport)
    # (an engine lost meanwhile is replaced and loaded from the learners: the sync never hangs on it)
    sync_m = rollout.load_weights(cfg.cluster.weight_sync, learners, version=step)
    m = step_metrics(batch, learner_metrics)
    m.update(sync_m)
    m.update(async_m)
    m["time/learn"] = learn_s
    return m


def sync_batches(make_batch: Callable[[int], Batch], first: int, last: int) -> Iterator[Batch]:
    """max_staleness = 0: batch s is generated after step s-1's weights reached the engines."""
    for step in range(first, last + 1):
        yield make_batch(step)


class AsyncBatches:
    """max_staleness = k >= 1: a thread generates the next batches while the learners train.

    The batch of step s starts generating once the weights of step s-1-ahead are on the engines
    (`ahead` = trainer.generate_ahead, default k), so with ahead = k nothing it samples is ever
    older than the bound when trained; a larger `ahead` keeps the engines busier, and what goes
    stale is dropped (`trainable`). Weight loads queue on each engine between generate calls, so
    a sync stalls generation by the load alone.
    """

    def __init__(self, make_batch: Callable[[int], Batch], first: int, last: int, ahead: int):
        self.make_batch, self.first, self.last, self.ahead = make_batch, first, last, ahead
        self.synced = first - 1  # the weight version on the engines
        self.changed = threading.Condition()
        self.stopping = False
        self.ready: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._generate, name="rlvr-generate", daemon=True)
        self.thread.start()

    def _generate(self) -> None:
        try:
            for step in range(self.first, self.last + 1):
                start = time.perf_counter()
                with self.changed:
                    self.changed.wait_for(lambda: self.stopping or self.synced >= step - 1 - self.ahead)
                    if self.stopping:
                        return
                waited = time.perf_counter() - start
                batch = self.make_batch(step)
                batch.stats["time/generator_wait"] = waited  # generation waiting for weights
                self.ready.put(batch)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
            self.ready.put(e)

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.first, self.last + 1):
            start = time.perf_counter()
            item = self.ready.get()
            if isinstance(item, BaseException):
                raise item
            item.stats["time/learner_wait"] = time.perf_counter() - start  # learning waiting for data
            yield item

    def synced_version(self, version: int) -> None:
        with self.changed:
            self.synced = version
            self.changed.notify_all()

    def close(self, timeout_s: float = 300) -> None:
        """Stop after the batch in flight (it is discarded: resume regenerates it)."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        self.thread.join(timeout=timeout_s)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def train(cfg: DictConfig) -> dict:
    validate(cfg)  # bad keys and values fail here, before any actor starts
    preset = algorithm_preset(cfg.algorithm)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = resolve_resume(run_dir, str(cfg.resume.mode))
    if ckpt is not None:
        check_resume_config(ckpt, cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # A cluster too small for the placement fails here, before any model is converted or loaded.
    start_ray(cfg)
    check_fits(role_plan(cfg, preset), cluster_nodes())
    model_path = resolve_model_path(cfg.model.path, cfg.cache_dir)
    train_problems = load_problems(OmegaConf.to_container(cfg.data.train, resolve=True))
    eval_problems = evaluation_problems(cfg, train_problems)
    train_problems, warmup_problems = split_warmup(train_problems, cfg.algorithm.warmup_prompts, cfg.seed)
    stream = PromptStream(train_problems, seed=cfg.seed)
    log.info(
        "%s + weighting %s | model %s | data %s: %d train, %d held-out prompts | %d steps x %d prompts x n=%d | run_dir %s",
        cfg.algorithm.name, cfg.weighting.name, model_path, cfg.data.name, len(train_problems), len(eval_problems),
        cfg.trainer.steps, cfg.trainer.batch_size, cfg.algorithm.n, run_dir,
    )

    render = prompt_renderer(cfg, model_path)
    with running_roles(cfg, model_path, preset) as roles:
        rollout, verifier, learners = roles["rollout"], roles["verifier"], roles["learners"]
        sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=cfg.rollout.max_tokens)
        controller = BudgetController(controller_config(cfg, preset), rollout, verifier, roles["value"], render, sampling)
        parts = StepParts(cfg, preset, roles, update_config(cfg, preset), hadw_state(cfg.weighting))
        metrics_log = MetricsLog(run_dir, cfg)
        total = cfg.trainer.steps
        history: list[dict] = []
        start_step, heldout_before = 1, None

        def restore(state: dict) -> int:
            """Every role and the loop's state as of a checkpoint; the step to continue at."""
            stream.load_state_dict(state["stream"])
            parts.hadw_state.load_state_dict(state["hadw"])
            if state.get("controller") is not None:  # checkpoints from before V05Baseline have none
                controller.load_state_dict(state["controller"])
            set_rng_state(state["rng"])
            rollout.load_weights(cfg.cluster.weight_sync, learners, version=state["step"])
            return state["step"] + 1

        # What a run that loses its learners before its first checkpoint goes back to.
        initial = copy.deepcopy({"step": 0, "stream": stream.state_dict(), "hadw": parts.hadw_state.state_dict(),
                                 "controller": controller.state_dict(), "rng": rng_state(), "value": {"prompts": [], "success": []}})
        if ckpt is not None:
            state = load_training_state(ckpt, roles)
            start_step, heldout_before = restore(state), state.get("heldout_before")
            log.info("resumed from %s: continuing at step %d (epoch %d)", ckpt, start_step, stream.epoch)
            if start_step > total:
                log.warning(
                    "%s already holds step %d of trainer.steps=%d: nothing to train. Raise trainer.steps to go on, "
                    "or pass resume=never (or another run_dir) to start fresh.", run_dir, state["step"], total
                )
        else:
            step0: dict = {}
            if warmup_problems:
                step0 = controller.warm_start(warmup_problems, seed=cfg.seed * 100003)
                log.info(
                    "V0.5 warm start: %d prompts, %d rollouts in %.1f s; prior Brier %.4f (the context mean's %.4f), window %d",
                    step0["warmup/prompts"], step0["warmup/rollouts"], step0["warmup/seconds"], step0["warmup/prior_brier"],
                    step0["warmup/context_mean_brier"], step0["v05/window"],
                )
                # a learner lost before the first checkpoint goes back to the warmed-up state
                initial.update(controller=copy.deepcopy(controller.state_dict()), value=roles["value"].state)
            eval_records: list[dict] = []
            if cfg.eval.at_start:
                step0.update(evaluate(rollout, verifier, eval_problems, render, cfg, seed=cfg.seed + 10**6, per_prompt=eval_records))
                heldout_before = step0.get("eval/accuracy")
                log.info("step 0 held-out accuracy %.3f on %d prompts", float("nan") if heldout_before is None else heldout_before, len(eval_problems))
            if step0:
                metrics_log.write(0, step0, eval_records=eval_records)
                history.append({"step": 0, **step0})

        k = cfg.trainer.max_staleness

        def make_batch(step: int) -> Batch:
            """1. rollouts: the controller decides how many per prompt, and scores them."""
            start = time.perf_counter()
            batch = controller.collect(stream.next(cfg.trainer.batch_size), stream.next, seed=cfg.seed * 100003 + step)
            batch.stream_state = stream.state_dict()
            batch.controller_state = controller.state_dict()
            if k and roles["value"] is not None:  # the server moves on with the batches generated ahead
                batch.value_state = roles["value"].state  # the controller's snapshot after this batch
            batch.stats["time/collect"] = time.perf_counter() - start
            return batch

        from tqdm import tqdm

        stop = StopRequest()
        bar = tqdm(total=total, initial=start_step - 1, desc="train", disable=not cfg.trainer.progress, dynamic_ncols=True, file=sys.stderr)
        source = AsyncBatches(make_batch, start_step, total, cfg.trainer.generate_ahead or k) if k else None
        step = start_step - 1
        last = None  # (step, state) of the last trained step: saved if a role fails for good
        learner_restarts, learner_faults = 0, {"restarts": 0, "seconds_lost": 0.0}
        try:
            while True:  # one pass, and one more after each learner restart
                batches = source if source is not None else sync_batches(make_batch, start_step, total)
                try:
                    for step, batch in enumerate(batches, start=start_step):
                        step_start = time.perf_counter()
                        m = train_step(parts, batch, step)
                        if source is not None:
                            source.synced_version(step)
                            m["time/step"] = time.perf_counter() - step_start + batch.stats.get("time/learner_wait", 0.0)
                        else:
                            m["time/step"] = time.perf_counter() - step_start + batch.stats["time/collect"]
                        m["gen_tokens_per_s"] = m.get("gen_tokens", 0) / max(m.get("time/generate", 1e-9), 1e-9)
                        m.update(fault_metrics(roles, learner_faults))
                        # 5. metrics
                        eval_records = []
                        if cfg.trainer.eval_every and (step % cfg.trainer.eval_every == 0 or step == total):
                            eval_start = time.perf_counter()
                            every = cfg.eval.pass_at_k_every
                            sampled = not every or step % every == 0 or step == total
                            m.update(evaluate(rollout, verifier, eval_problems, render, cfg, cfg.seed + 10**6 + step, sampled, eval_records))
                            m["time/eval"] = time.perf_counter() - eval_start
                        metrics_log.write(step, m, batch.decisions, eval_records)
                        history.append({"step": step, **m})
                        bar.update(1)
                        tqdm.write(console_line(step, total, m), file=sys.stdout)
                        sys.stdout.flush()
                        # 6. checkpoint: periodically, at the end, and when asked to stop. It records the
                        # trained step; an async run regenerates whatever was generated ahead of it.
                        state = {
                            "step": step,
                            "epoch": batch.stream_state["epoch"],
                            "stream": batch.stream_state,
                            "controller": batch.controller_state,
                            "hadw": parts.hadw_state.state_dict(),
                            "rng": rng_state(),
                            "heldout_before": heldout_before,
                            # the value server's state after this batch: the controller's snapshot
                            "value": roles["value"].state if roles["value"] is not None and k == 0 else batch.value_state,
                        }
                        every = cfg.trainer.save_every
                        saved = (every and step % every == 0) or step == total or stop.signal is not None
                        if saved:
                            path = save_training_state(run_dir, step, roles, state, cfg)
                            log.info("checkpoint %s", path)
                        last = (step, state, saved)
                        if stop.signal is not None:
                            log.warning("stopped at step %d; `rlvr train` with the same run_dir resumes from here", step)
                            break
                    break
                except ray.exceptions.RayActorError as e:
                    # A learner rank died: its optimizer state went with it. Restart every rank, go
                    # back to the last checkpoint (or the start) and train the steps since again.
                    if k or not learners_lost(learners):
                        raise
                    learner_restarts += 1
                    if learner_restarts > cfg.trainer.max_restarts:
                        raise RoleFailed(
                            f"a learner rank died {learner_restarts} times, more than trainer.max_restarts={cfg.trainer.max_restarts} "
                            f"allows; last error: {str(e).strip().splitlines()[0]}"
                        ) from e
                    t0 = time.perf_counter()
                    restart_learners(cfg, roles, model_path)
                    back_to = resolve_resume(run_dir, "auto")
                    state = load_training_state(back_to, roles) if back_to is not None else initial
                    if back_to is None and roles["value"] is not None:
                        roles["value"].load(initial["value"])
                    start_step, last = restore(state), None
                    history = [h for h in history if h["step"] < start_step]
                    bar.n = start_step - 1
                    bar.refresh()
                    learner_faults["restarts"] = learner_restarts
                    learner_faults["seconds_lost"] += time.perf_counter() - t0
                    log.warning("a learner rank died (%s); restarted every rank from %s, training again from step %d (%d of at most %d)",
                                type(e).__name__, back_to or "the initial weights", start_step, learner_restarts, cfg.trainer.max_restarts)
        except RoleFailed as e:
            # The failure came while collecting the next batch: the learners still hold the last
            # trained step's weights, so that step's checkpoint is exact.
            if last is not None and not last[2]:
                path = save_training_state(run_dir, last[0], roles, last[1], cfg)
                log.info("checkpoint %s", path)
            where = f"a checkpoint at step {last[0]}" if last is not None else "its last checkpoint"
            raise RoleFailed(f"{e}. The run stopped with {where}; the same command resumes it.") from e
        finally:
            if source is not None:
                source.close(300 if sys.exc_info()[0] is None else 10)  # an abort need not wait for the batch in flight
            stop.restore()
            bar.close()
            metrics_log.close()
        summary = {
            "heldout_before": heldout_before,
            "heldout_after": next((h["eval/accuracy"] for h in reversed(history) if "eval/accuracy" in h), None),
            "steps": step if total >= start_step else total,
            "run_dir": str(run_dir),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("done: held-out accuracy %s -> %s", summary["heldout_before"], summary["heldout_after"])
        return {"summary": summary, "history": history}
