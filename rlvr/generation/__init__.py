"""Generators: problems in, scored trajectories out, for training, evaluation and the oracle alike.

The seam between the BudgetController (how many rollouts of which prompt) and what one rollout is:

    SingleTurn   single_turn.py  one prompt -> one answer: render, sample on the engines, score
    MultiTurn    multi_turn.py   an episode with an environment (`rlvr.envs`): the model's turns, tool
                                 calls run in the sandbox, the environment's observations, until it
                                 ends or a limit is hit

`base.py` holds the `Generator` protocol and `Rollouts`; a new kind of rollout is one module with a
`generate` and a branch in `make_generator`.

Both return `Rollouts`: one `Trajectory` per rollout (``group`` is its problem's index) and the
counts the step logs. A multi-turn trajectory is token in, token out: the prompt is rendered once,
each turn continues from the ids so far, and each observation is tokenized on its own with the chat
template's role markers, so the model's own ids are never re-tokenized. Its loss mask is 1 exactly
on the model's tokens, and its log-probs are the engine's there (0 elsewhere, masked).
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig

from rlvr.data import Problem
from rlvr.envs import environment_from_config
from rlvr.generation.base import VERIFIER_FAILURES, Generator, Rollouts, env_rates, verifier_counts
from rlvr.generation.multi_turn import ChatTokens, Episode, MultiTurn
from rlvr.generation.single_turn import SingleTurn

__all__ = ["VERIFIER_FAILURES", "ChatTokens", "Episode", "Generator", "MultiTurn", "Rollouts", "SingleTurn", "env_rates",
           "first_prompt_ids", "make_generator", "verifier_counts"]


def make_generator(cfg: DictConfig, rollout, verifier, model_path: str) -> Generator:
    """`SingleTurn` when `env.name` is none, else `MultiTurn` with that environment."""
    from transformers import AutoTokenizer

    from rlvr.data.stream import message_builder, prompt_renderer

    if cfg.env.name == "none":
        return SingleTurn(rollout, verifier, prompt_renderer(cfg, model_path, as_ids=True))
    env = environment_from_config(cfg.env, cfg.trainer.role_timeout_s)
    return MultiTurn(rollout, verifier, AutoTokenizer.from_pretrained(model_path), env, message_builder(cfg),
                     cfg.env.max_turns, cfg.env.max_tokens, cfg.model.max_model_len, cfg.env.parser)


def first_prompt_ids(cfg: DictConfig, model_path: str) -> Callable[[Problem], list[int]]:
    """Each problem's first prompt as the job's generator renders it: the data's chat prompt, or an
    episode's first messages from the environment with the tool block (what the length checks and
    the KV cache's size must read: the calculator's is 390 tokens where the data's is 112)."""
    generator = make_generator(cfg, None, None, model_path)  # rendering only: no engine or verifier is called
    if isinstance(generator, SingleTurn):
        return generator.render
    return lambda problem: generator.first_prompt(problem)[1]
