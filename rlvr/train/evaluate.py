"""Held-out evaluation: the prompts it scores, greedy pass@1 and sampled pass@k, and `rlvr eval`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray
from omegaconf import DictConfig, OmegaConf

from rlvr.algorithms import pass_at_k
from rlvr.data import Problem, load_problems
from rlvr.generation import Generator, env_rates, make_generator
from rlvr.models import resolve_model_path
from rlvr.rollout.engines import SamplingConfig
from rlvr.rollout.pool import RolloutEngine, RolloutPool
from rlvr.runtime.placement import actor_options, plan_placement
from rlvr.runtime.roles import engine_config, start_ray, threads_env, verifier_role, verifier_start_error

if TYPE_CHECKING:
    from rlvr.train.state import StopRequest

log = logging.getLogger("rlvr")


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


def checkpoint_problems(cfg: DictConfig) -> list[Problem]:
    """What `rlvr eval` scores: the run's own held-out set (`evaluation_problems`: no training
    question, `eval.split`), or, for `data=file` without a training file, the eval split as it is.
    (Before 2026-12-07 it scored `data.eval` raw: 71 of `data=mix`'s 256 were training prompts.)"""
    train = [] if OmegaConf.missing_keys(cfg.data.train) else load_problems(OmegaConf.to_container(cfg.data.train, resolve=True))
    return evaluation_problems(cfg, train)


def correct_counts(generator: Generator, problems: list[Problem], n: int, sampling: SamplingConfig, seed: int,
                   env_counts: dict | None = None) -> list[int]:
    """How many of ``n`` seeded rollouts of each problem are correct; ``env_counts``, when given,
    receives a multi-turn generator's `env/*` counts."""
    out = generator.generate(problems, [n] * len(problems), sampling, seed)
    correct = [0] * len(problems)
    for t in out.trajectories:
        correct[t.group] += int(t.correct)
    if env_counts is not None:
        env_counts.update({k: v for k, v in out.counts.items() if k.startswith("env/")})
    return correct


def evaluate(
    generator: Generator,
    problems: list[Problem],
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
    families = sorted({p.family for p in problems})

    def by_family(name: str, values: list[float]) -> dict:
        """The metric over all problems, and per task family when there are several."""
        out = {f"eval/{name}": float(np.mean(values))}
        if len(families) > 1:
            for f in families:
                out[f"eval/{name}/{f}"] = float(np.mean([v for v, p in zip(values, problems) if p.family == f]))
        return out

    n = cfg.eval.n_samples
    # minutes on a large eval.size, with the training bar standing still: say what runs
    log.info("held-out evaluation: %d prompts, greedy%s", len(problems), f", then {n} samples each" if n > 1 and sampled else "")
    env_counts: dict = {}
    greedy = correct_counts(generator, problems, 1, SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=cfg.eval.max_tokens), seed, env_counts)
    metrics = by_family("accuracy", greedy)
    metrics.update({f"eval/{k}": v for k, v in env_rates(env_counts).items()})  # tool calls and turns of the greedy episodes
    records = [{"uid": p.uid, "family": p.family, "greedy": g} for p, g in zip(problems, greedy)]
    if n > 1 and sampled:
        sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=cfg.eval.max_tokens)
        sampled_env: dict = {}
        correct = correct_counts(generator, problems, n, sampling, seed + 1, sampled_env)
        metrics.update({f"eval/sampled/{k}": v for k, v in env_rates(sampled_env).items()})
        for k in range(1, n + 1):
            metrics.update(by_family(f"pass@{k}", [pass_at_k(n, c, k) for c in correct]))
        for r, c in zip(records, correct):
            r.update(samples=n, successes=c)
    if per_prompt is not None:
        per_prompt.extend(records)
    return metrics


def eval_config(target: str | Path, overrides: list[str]) -> DictConfig:
    """What `rlvr eval` runs with. A model folder: the tree composed with the overrides. A checkpoint:
    its run's own config (data, seed, held-out set, lengths, reward terms), with what the overrides
    change taken from the tree composed with them: each key they name (a group, `data=humaneval`,
    replaces the run's whole node) and each value they change through a group's defaults (data=humaneval
    brings `verifier.terms=[code_tests]`). (Before 2026-12-07 a checkpoint got the tree's defaults:
    another data set's prompts, scored as if they were the run's.)"""
    from rlvr.checkpoint import checkpoint_named, validate_checkpoint
    from rlvr.config import ConfigError, compose, overridden_keys

    composed = compose(overrides)
    ckpt = checkpoint_named(target)
    if ckpt is None:
        return composed
    problem = validate_checkpoint(ckpt)  # its config.yaml cut short was a YAML traceback here
    if problem:
        raise ConfigError(f"{ckpt} is not a complete checkpoint: {problem}")
    saved = OmegaConf.load(ckpt / "config.yaml")
    resolved = OmegaConf.to_container(composed, resolve=True)
    named = overridden_keys(overrides)
    for key in [*named, *_changed(OmegaConf.to_container(compose([]), resolve=True), resolved)]:
        OmegaConf.update(saved, key, OmegaConf.select(OmegaConf.create(resolved), key), merge=False)
    return saved


def _changed(base: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two resolved configs (a dict compared key by key)."""
    keys = []
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            keys += _changed(base[k], v, f"{prefix}{k}.")
        elif k not in base or base[k] != v:
            keys.append(f"{prefix}{k}")
    return keys


def evaluate_model(target: str, cfg: DictConfig, stop: StopRequest | None = None) -> dict:
    """`rlvr eval`: held-out accuracy of a checkpoint (exported to a temp folder first) or a model
    folder; `cfg` from `eval_config`. ``stop`` takes SIGTERM/SIGINT back from Ray once it has started."""
    import tempfile

    from rlvr.checkpoint import checkpoint_named
    from rlvr.export import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="rlvr-eval-") as tmp:
        ckpt = checkpoint_named(target)
        if ckpt is not None:
            model_path = str(export_checkpoint(ckpt, Path(tmp) / "model"))
        else:
            model_path = resolve_model_path(target, cfg.cache_dir)
        problems = checkpoint_problems(cfg)

        start_ray(cfg)
        if stop is not None:
            stop.install()  # ray.init put its own SIGTERM handler in, which aborted the driver (exit 134)
        # what a training run gives one engine and the verifier (its GPUs, tensor parallel, CPUs):
        # the engine had asked for CPUs only, so on a GPU cluster vLLM found no device
        plan = plan_placement(cfg.cluster, with_value=False)
        engine = RolloutEngine.options(**actor_options(plan["rollout"].actor), runtime_env=threads_env(cfg)).remote(
            engine_config(cfg, model_path)
        )
        verifier = verifier_role(cfg, actor_options(plan["verifier"].actor))
        pool = RolloutPool([engine], timeout_s=cfg.rollout.timeout_s)  # a hung engine fails the evaluation, as in training
        try:
            try:
                ray.get(verifier.actor.__ray_ready__.remote())
            except ray.exceptions.RayActorError as e:
                raise verifier_start_error(e) or e
            return evaluate(make_generator(cfg, pool, verifier, model_path), problems, cfg, seed=cfg.seed)
        finally:
            ray.kill(engine)
            verifier.kill()
