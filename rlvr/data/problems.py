"""A problem, a data split's config, and the checks every row passes before it is trained on.

Every gold answer is checked at load time with :func:`rlvr.rewards.check_answer_parsable`. A bad
row (not an object, missing or empty prompt, missing answer, an answer the verifier could not use)
raises :class:`DataError` naming the source, the row and the fault; with ``skip_bad_rows=True`` a
warning names each skipped row instead.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import json
import logging
import numbers
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from rlvr.rewards import ANSWER_TYPES, check_answer_parsable
from rlvr.types import Problem

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")

class DataError(ValueError):
    """A data file or generator produced a row that cannot be trained on."""


def _default_tasks() -> list:
    # Sums and differences of two 2-digit numbers: 16,200 distinct questions
    # (allowing 1-digit terms would add only 200 more, which then repeat all
    # over a 1000-problem split), meant to start a 135M instruct model inside
    # the 10-60% band the design asks for.
    return [
        {
            "name": "chain_sum",
            "weight": 1.0,
            "kwargs": {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2},
        }
    ]


@dataclass
class DataSplitConfig:
    """One split of the data (the Hydra node ``data.train`` / ``data.eval``)."""

    source: str = "reasoning_gym"  # reasoning_gym | file | champ | humaneval | code_tasks
    # reasoning_gym: [{"name": str, "weight": float, "kwargs": dict}] (a bare
    # task name is accepted too); an item may also carry "answer_type", and a
    # "label" (default: name) that names the family, so that one task can
    # appear at several difficulty levels.
    tasks: list = field(default_factory=_default_tasks)
    size: int = 1000  # reasoning_gym and code_tasks: number of problems
    seed: int = 0
    path: str | None = None  # file: .jsonl / .json / .parquet
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    answer_type: str = "number"  # file and reasoning_gym; champ decides per problem
    skip_bad_rows: bool = False
    format: str = "auto"  # file: auto | rlvr | verl | trl (auto: detected from the first row)
    limit: int | None = None  # keep at most this many problems (after exclusion; file and champ: a seeded sample in file order)


# --------------------------------------------------------------------------
# config handling
# --------------------------------------------------------------------------


def to_plain(obj: Any) -> Any:
    """OmegaConf containers to plain dicts/lists (no-op for plain objects)."""
    if OmegaConf.is_config(obj):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def as_split_config(cfg: DataSplitConfig | Mapping) -> DataSplitConfig:
    if isinstance(cfg, DataSplitConfig):
        return cfg
    cfg = to_plain(cfg)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"data config must be a DataSplitConfig or a mapping, got {type(cfg).__name__}")
    known = {f.name for f in dataclasses.fields(DataSplitConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown data config keys {unknown}; known keys: {sorted(known)}")
    return DataSplitConfig(**dict(cfg))


def check_answer_type(answer_type: str, where: str = "") -> None:
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"{where}unknown answer_type {answer_type!r}; expected one of {ANSWER_TYPES}")


def _gsm8k_answer(answer: str) -> str:
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip()
    return answer


def _answer_text(value: Any, answer_type: str) -> tuple[str | None, str | None]:
    """(answer string, None) or (None, reason)."""
    if value is None:
        return None, "missing answer"
    if answer_type == "code":  # the tests: kept as JSON text, whatever shape they came in
        value = to_plain(value)
        if isinstance(value, (Mapping, list, tuple)):
            return json.dumps(value), None
        return (value, None) if isinstance(value, str) and value.strip() else (None, "missing tests")
    if isinstance(value, bool):
        return None, f"answer must be a string or a number, got {value!r}"
    if isinstance(value, decimal.Decimal) and value.is_finite():  # a Parquet decimal column
        return format(value.normalize(), "f"), None
    if isinstance(value, numbers.Real):  # JSON numbers; numpy scalars from Parquet
        if isinstance(value, numbers.Integral):
            return str(int(value)), None
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            return None, f"answer is not finite: {value!r}"
        # positional (repr's 1e-07 no numeric literal reads) and shortest (str(int(6.022e23)) wrote the
        # float's binary value, 602200000000000027262976)
        return np.format_float_positional(value + 0.0, trim="-"), None  # + 0.0: -0.0 is "0"
    if not isinstance(value, str):
        return None, f"answer must be a string or a number, got {type(value).__name__}"
    text = _gsm8k_answer(value).strip()
    if not text:
        return None, "empty answer"
    return text, None


class RowErrors:
    """Collects bad rows: raise on the first one, or warn and skip."""

    def __init__(self, where: str, skip: bool):
        self.where = where
        self.skip = skip
        self.skipped = 0
        self._logged: set[str] = set()

    def bad(self, row: str, reason: str) -> None:
        msg = f"{self.where}: {row}: {reason}"
        if not self.skip:
            raise DataError(msg + " (set skip_bad_rows=true to skip bad rows)")
        self.skipped += 1
        if msg not in self._logged:  # generator rounds may revisit a row
            self._logged.add(msg)
            log.warning("skipping bad row: %s", msg)

    def summary(self, kept: int) -> None:
        if self.skipped:
            log.warning("%s: skipped %d bad rows, kept %d", self.where, self.skipped, kept)


def _chat_prompt(messages: Any) -> tuple[str, tuple[tuple[str, str], ...]] | str:
    """(question, turns before it) from a list of {role, content} messages, or the reason it is unusable."""
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            return f"prompt message {i} must be {{'role': one of {list(ROLES)}, 'content': str}}, got {str(m)[:80]!r}"
        turns.append((m["role"], m["content"]))
    if not turns or turns[-1][0] != "user":
        return "a chat prompt must end with a user message (the question)"
    return turns[-1][1], tuple(turns[:-1])


def make_problem(
    uid: str, question: Any, answer: Any, answer_type: str, errors: RowErrors, row: str, meta: Mapping | None = None
) -> Problem | None:
    context: tuple[tuple[str, str], ...] = ()
    chat = isinstance(question, (list, tuple))
    if chat:
        turns = _chat_prompt(question)
        if isinstance(turns, str):
            errors.bad(row, turns)
            return None
        question, context = turns
    if question is None:
        errors.bad(row, "missing prompt")
        return None
    if not isinstance(question, str):
        errors.bad(row, f"prompt must be a string, got {type(question).__name__}")
        return None
    if not question.strip():
        errors.bad(row, "empty prompt")
        return None
    for part in (question, answer, *(c for _, c in context)):
        try:
            if isinstance(part, str):
                part.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate ("\ud83d": an emoji cut in half) failed in the tokenizer, no row named
            errors.bad(row, f"not valid Unicode text: {e.reason} at character {e.start} of {part[:40]!r}")
            return None
    text, reason = _answer_text(answer, answer_type)
    if reason is None:
        reason = check_answer_parsable(text, answer_type)
        if reason is not None:
            reason = f"answer {text[:80]!r} cannot be used as answer_type={answer_type!r}: {reason}"
    if reason is not None:
        errors.bad(row, reason)
        return None
    return Problem(uid=uid, question=question, answer=text, answer_type=answer_type, context=context, meta=meta, chat=chat)



def derived_seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in ("rlvr", *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seeded_sample(items: list, size: int, *seed_parts: Any) -> list:
    """``size`` of ``items``, drawn with the seed `derived_seed(*seed_parts)` and kept in their order:
    a data file is often ordered (CHAMP by category, MATH's test set by subject), and a prefix
    would be its first part."""
    keep = sorted(random.Random(derived_seed(*seed_parts)).sample(range(len(items)), size))
    return [items[i] for i in keep]

