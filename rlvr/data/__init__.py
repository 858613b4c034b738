"""Prompts: problem sources, chat messages and a resumable prompt stream.

Sources, picked by ``DataSplitConfig.source``, one module each:

- ``reasoning_gym`` (:mod:`~rlvr.data.generators`): seeded procedural generators, mixed by weight;
- ``file`` (:mod:`~rlvr.data.files`): local JSONL, JSON, Parquet or ``save_to_disk`` folders, in
  rlvr's, verl's or TRL's row format;
- ``champ`` (:mod:`~rlvr.data.champ`): the 270 competition problems of ``champ-dataset``;
- ``humaneval`` and ``code_tasks`` (:mod:`~rlvr.data.code`): code problems scored by their tests.

:mod:`~rlvr.data.problems` holds the :class:`Problem`, a split's config and the row checks;
:mod:`~rlvr.data.stream` the prompt stream, the chat messages and the prompt renderer.
"""

from __future__ import annotations

from collections.abc import Mapping

from rlvr.data.champ import load_champ
from rlvr.data.code import load_code_tasks, load_humaneval
from rlvr.data.files import load_file
from rlvr.data.generators import load_reasoning_gym
from rlvr.data.problems import DataError, DataSplitConfig, Problem, as_split_config
from rlvr.data.stream import PromptStream, build_messages, prompt_renderer

LOADERS = {
    "reasoning_gym": load_reasoning_gym,
    "file": load_file,
    "champ": load_champ,
    "humaneval": load_humaneval,
    "code_tasks": load_code_tasks,
}
SOURCES = tuple(LOADERS)

__all__ = [
    "DataError",
    "DataSplitConfig",
    "Problem",
    "PromptStream",
    "SOURCES",
    "build_messages",
    "load_problems",
    "prompt_renderer",
]


def load_problems(cfg: DataSplitConfig | Mapping, exclude: set[str] | None = None) -> list[Problem]:
    """Load one split.  ``exclude``: question texts to leave out (e.g. the
    training questions, so that a held-out split is truly held out)."""
    try:
        cfg = as_split_config(cfg)
        if cfg.source not in LOADERS:
            raise ValueError(f"unknown data source {cfg.source!r}; known sources: {list(SOURCES)}")
        problems = LOADERS[cfg.source](cfg, exclude)
        if cfg.limit is not None:
            if int(cfg.limit) < 0:
                raise ValueError(f"data.limit must be >= 0, got {cfg.limit}")
            problems = problems[: int(cfg.limit)]
        return problems
    except DataError:
        raise
    except ValueError as e:  # a file that is not UTF-8 or not Parquet, an unknown type or value: a message, not a traceback
        where = cfg.path if isinstance(cfg, DataSplitConfig) and cfg.path else getattr(cfg, "source", "data")
        reason = f"not UTF-8 text ({e.reason})" if isinstance(e, UnicodeDecodeError) else str(e)
        raise DataError(reason if reason.startswith(str(where)) else f"{where}: {reason}") from e
