"""Held-out evaluation: the prompts it scores, greedy pass@1 and sampled pass@k, and `rlvr eval`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import ray
from omegaconf import DictConfig, OmegaConf

from rlvr.algorithms import pass_at_k
from rlvr.data import Problem, load_problems, prompt_renderer
from rlvr.models import resolve_model_path
from rlvr.roles import engine_config, start_ray, threads_env, verifier_role
from rlvr.rollout import GenerationRequest, RolloutEngine, RolloutPool, SamplingConfig

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


def correct_counts(rollout: RolloutPool, verifier, problems: list[Problem], render, n: int, sampling: SamplingConfig, seed: int) -> list[int]:
    """How many of ``n`` seeded samples of each problem the verifier scores correct."""
    from rlvr.sandbox import ScoreRequest

    samples = rollout.generate([GenerationRequest(i, render(p), n) for i, p in enumerate(problems)], sampling, seed)
    results, _ = verifier.call("score", [ScoreRequest.for_problem(s.text, problems[s.prompt_index]) for s in samples])
    correct = [0] * len(problems)
    for s, r in zip(samples, results):
        correct[s.prompt_index] += int(r.correct)
    return correct


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
    families = sorted({p.family for p in problems})

    def by_family(name: str, values: list[float]) -> dict:
        """The metric over all problems, and per task family when there are several."""
        out = {f"eval/{name}": float(np.mean(values))}
        if len(families) > 1:
            for f in families:
                out[f"eval/{name}/{f}"] = float(np.mean([v for v, p in zip(values, problems) if p.family == f]))
        return out

    greedy = correct_counts(rollout, verifier, problems, render, 1, SamplingConfig(temperature=0.0, max_tokens=cfg.eval.max_tokens), seed)
    metrics = by_family("accuracy", greedy)
    records = [{"uid": p.uid, "family": p.family, "greedy": g} for p, g in zip(problems, greedy)]
    n = cfg.eval.n_samples
    if n > 1 and sampled:
        sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=cfg.eval.max_tokens)
        correct = correct_counts(rollout, verifier, problems, render, n, sampling, seed + 1)
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
        verifier = verifier_role(cfg, {"num_cpus": cfg.cluster.actor_cpus})
        try:
            return evaluate(RolloutPool([engine]), verifier, problems, render, cfg, seed=cfg.seed)
        finally:
            ray.kill(engine)
            verifier.kill()
