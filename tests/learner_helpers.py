"""Learner and engine configs for component tests, built from the config tree like the trainer's."""

from dataclasses import replace

from rlvr.batch import MiniBatch, Trajectory
from rlvr.config import algorithm_preset, compose
from rlvr.learner import LearnerConfig, UpdateConfig
from rlvr.rollout import EngineConfig
from rlvr.trainer import engine_config, learner_config, update_config


def tiny_learner_config(model_path: str, *overrides: str, **fields) -> LearnerConfig:
    """`fields` replace values after composing (e.g. threads=1 for a component test)."""
    return replace(learner_config(compose(["model=tiny-random", *overrides]), model_path), **fields)


def tiny_update_config(*overrides: str, **fields) -> UpdateConfig:
    cfg = compose(["model=tiny-random", *overrides])
    return replace(update_config(cfg, algorithm_preset(cfg.algorithm)), **fields)


def tiny_engine_config(model_path: str, *overrides: str, **fields) -> EngineConfig:
    return replace(engine_config(compose(["model=tiny-random", *overrides]), model_path), **fields)


def mini_batch(*micro_batches: list[Trajectory]) -> MiniBatch:
    """One mini-batch of the given micro-batches, its global counts taken from them (one rank)."""
    seqs = [t for mb in micro_batches for t in mb]
    return MiniBatch(list(micro_batches), tokens=sum(t.num_tokens for t in seqs), sequences=len(seqs))
