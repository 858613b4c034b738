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

import logging
from collections.abc import Iterable, Mapping
from typing import Any

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

log = logging.getLogger(__name__)


class QuestionSet:
    """Questions to leave out, compared with their whitespace collapsed: "Q" and "Q\n" are one
    question (an exact match let such a training question into the held-out split)."""

    def __init__(self, questions: Iterable[str]):
        self._keys = {self._key(q) for q in questions}

    @staticmethod
    def _key(question: Any) -> Any:
        return " ".join(question.split()) if isinstance(question, str) else question

    def __contains__(self, question: object) -> bool:
        return self._key(question) in self._keys

    def __len__(self) -> int:
        return len(self._keys)


def load_problems(cfg: DataSplitConfig | Mapping, exclude: set[str] | None = None) -> list[Problem]:
    """Load one split.  ``exclude``: question texts to leave out (e.g. the
    training questions, so that a held-out split is truly held out)."""
    if exclude:
        exclude = QuestionSet(exclude)
    try:
        cfg = as_split_config(cfg)
        if cfg.source not in LOADERS:
            raise ValueError(f"unknown data source {cfg.source!r}; known sources: {list(SOURCES)}")
        problems = LOADERS[cfg.source](cfg, exclude)
        if cfg.limit is not None:
            if int(cfg.limit) < 0:
                raise ValueError(f"data.limit must be >= 0, got {cfg.limit}")
            if int(cfg.limit) > len(problems):  # eval.size=1000 on a 164-problem set: say so, the intervals widen
                log.warning("%s: limit %d asked for, %d problems available: using %d", cfg.path or cfg.source, int(cfg.limit),
                            len(problems), len(problems))
            problems = problems[: int(cfg.limit)]
        return problems
    except DataError:
        raise
    except ValueError as e:  # a file that is not UTF-8 or not Parquet, an unknown type or value: a message, not a traceback
        where = cfg.path if isinstance(cfg, DataSplitConfig) and cfg.path else getattr(cfg, "source", "data")
        reason = f"not UTF-8 text ({e.reason})" if isinstance(e, UnicodeDecodeError) else str(e)
        raise DataError(reason if reason.startswith(str(where)) else f"{where}: {reason}") from e
