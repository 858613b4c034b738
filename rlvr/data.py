"""Prompts: problem sources, chat messages and a resumable prompt stream.

Three sources, picked by ``DataSplitConfig.source``:

``reasoning_gym``
    Procedural generators from the ``reasoning-gym`` package (offline, seeded).
    Several tasks are mixed with a seeded weighted draw.  Each task's generator
    gets a seed *derived* from (task name, split seed) by a hash: reasoning-gym
    builds item ``i`` from ``Random(seed + i)``, so raw seeds 0 and 1 would give
    the same items shifted by one, and a "held-out" split with seed 1 would be
    almost entirely the training split with seed 0.  The derived seeds make
    splits with different seeds practically disjoint; ``exclude`` makes them
    exactly disjoint (questions in it are dropped and replaced by further items).
``file``
    A local ``.jsonl`` (one object a line), ``.json`` (a list of objects) or
    ``.parquet`` file (needs ``pyarrow``), or a folder written by
    ``datasets.Dataset.save_to_disk``.  Row formats (``format``, detected per
    file by default):

    - ``rlvr``: a prompt column and an answer column (``prompt_key``, ``answer_key``);
    - ``verl``: ``prompt`` as chat messages, ``reward_model.ground_truth``,
      ``data_source`` and ``extra_info`` (kept for reward functions);
    - ``trl``: ``prompt`` as a string or chat messages, with ``answer`` or
      ``solution`` (whose last ``\boxed{}`` is the answer); the other columns are
      kept for reward functions.

    A chat prompt's last turn is the question; the turns before it (a system
    message among them wins over ``data.system_prompt``) are rendered with the
    model's chat template.  GSM8K answers (a solution ending in ``#### 42``)
    keep what follows the last ``####``.
``champ``
    The 270 competition problems of the ``champ-dataset`` package (for
    evaluation).  The answer type is chosen per problem (see
    :func:`_champ_answer`); ``answer_type`` in the config is not used.  The
    file is ordered by category, so ``limit`` takes a seeded sample (in file
    order) rather than a prefix.

Every gold answer is checked at load time with
:func:`rlvr.rewards.check_answer_parsable`.  A bad row (not an object, missing
or empty prompt, missing answer, an answer the verifier could not use) raises
:class:`DataError` naming the file, the row and the fault; with
``skip_bad_rows=True`` a warning names each skipped row instead.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import numbers
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "DataSplitConfig",
    "Problem",
    "PromptStream",
    "SOURCES",
    "build_messages",
    "load_problems",
]

SOURCES = ("reasoning_gym", "file", "champ")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
FORMATS = ("auto", "rlvr", "verl", "trl")
ROLES = ("system", "user", "assistant")
# Used only if rlvr.rewards cannot be imported.
_FALLBACK_ANSWER_TYPES = ("number", "expression", "choice", "string", "any")


class DataError(ValueError):
    """A data file or generator produced a row that cannot be trained on."""


@dataclass(frozen=True)
class Problem:
    uid: str  # stable id, e.g. "chain_sum/0/17" or "file:gsm8k.jsonl:42"
    question: str  # the question text shown to the model (no chat template applied)
    answer: str  # gold answer as a string
    answer_type: str = "number"  # number | expression | choice | string | any
    # chat turns before the question, as (role, content) pairs, from a chat-format prompt
    context: tuple[tuple[str, str], ...] = ()
    # the row's other fields (verl: data_source, extra_info; trl: its columns), for reward functions
    meta: Mapping | None = field(default=None, compare=False, repr=False)

    @property
    def family(self) -> str:
        """The task family a problem came from: its reasoning-gym task label, else its source file."""
        if self.uid.count("/") >= 2:
            return self.uid.rsplit("/", 2)[0]
        return self.uid.rsplit(":", 1)[0]


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

    source: str = "reasoning_gym"  # reasoning_gym | file | champ
    # reasoning_gym: [{"name": str, "weight": float, "kwargs": dict}] (a bare
    # task name is accepted too); an item may also carry "answer_type", and a
    # "label" (default: name) that names the family, so that one task can
    # appear at several difficulty levels.
    tasks: list = field(default_factory=_default_tasks)
    size: int = 1000  # reasoning_gym only: number of problems
    seed: int = 0
    path: str | None = None  # file: .jsonl / .json / .parquet
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    answer_type: str = "number"  # file and reasoning_gym; champ decides per problem
    skip_bad_rows: bool = False
    format: str = "auto"  # file: auto | rlvr | verl | trl (auto: detected from the first row)
    limit: int | None = None  # keep at most this many problems (after exclusion; champ: a seeded sample)


# --------------------------------------------------------------------------
# config handling
# --------------------------------------------------------------------------


def _to_plain(obj: Any) -> Any:
    """OmegaConf containers to plain dicts/lists (no-op for plain objects)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return obj
    if OmegaConf.is_config(obj):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def _as_config(cfg: DataSplitConfig | Mapping) -> DataSplitConfig:
    if isinstance(cfg, DataSplitConfig):
        return cfg
    cfg = _to_plain(cfg)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"data config must be a DataSplitConfig or a mapping, got {type(cfg).__name__}")
    known = {f.name for f in dataclasses.fields(DataSplitConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown data config keys {unknown}; known keys: {sorted(known)}")
    return DataSplitConfig(**dict(cfg))


def _answer_types() -> tuple:
    try:
        from rlvr.rewards import ANSWER_TYPES
    except ImportError:
        return _FALLBACK_ANSWER_TYPES
    return tuple(ANSWER_TYPES)


_FALLBACK_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+|\d+\s*/\s*\d+)")


def _check_answer(answer: str, answer_type: str) -> str | None:
    """Error message if the gold answer is unusable for ``answer_type``."""
    try:
        from rlvr.rewards import check_answer_parsable
    except ImportError:
        # Minimal stand-in, used only when rlvr.rewards is not importable.
        if not answer.strip():
            return "empty answer"
        if answer_type == "number" and not _FALLBACK_NUMBER.fullmatch(answer.strip().replace(",", "")):
            return f"not a numeric literal: {answer[:80]!r}"
        return None
    return check_answer_parsable(answer, answer_type)


# --------------------------------------------------------------------------
# row validation
# --------------------------------------------------------------------------


def _gsm8k_answer(answer: str) -> str:
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip()
    return answer


def _answer_text(value: Any) -> tuple[str | None, str | None]:
    """(answer string, None) or (None, reason)."""
    if value is None:
        return None, "missing answer"
    if isinstance(value, bool):
        return None, f"answer must be a string or a number, got {value!r}"
    if isinstance(value, numbers.Real):  # JSON numbers; numpy scalars from Parquet
        if isinstance(value, numbers.Integral):
            return str(int(value)), None
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            return None, f"answer is not finite: {value!r}"
        return (str(int(value)) if value.is_integer() else repr(value)), None
    if not isinstance(value, str):
        return None, f"answer must be a string or a number, got {type(value).__name__}"
    text = _gsm8k_answer(value).strip()
    if not text:
        return None, "empty answer"
    return text, None


class _RowErrors:
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


def _make_problem(
    uid: str, question: Any, answer: Any, answer_type: str, errors: _RowErrors, row: str, meta: Mapping | None = None
) -> Problem | None:
    context: tuple[tuple[str, str], ...] = ()
    if isinstance(question, (list, tuple)):
        chat = _chat_prompt(question)
        if isinstance(chat, str):
            errors.bad(row, chat)
            return None
        question, context = chat
    if question is None:
        errors.bad(row, "missing prompt")
        return None
    if not isinstance(question, str):
        errors.bad(row, f"prompt must be a string, got {type(question).__name__}")
        return None
    if not question.strip():
        errors.bad(row, "empty prompt")
        return None
    text, reason = _answer_text(answer)
    if reason is None:
        reason = _check_answer(text, answer_type)
        if reason is not None:
            reason = f"answer {text[:80]!r} cannot be used as answer_type={answer_type!r}: {reason}"
    if reason is not None:
        errors.bad(row, reason)
        return None
    return Problem(uid=uid, question=question, answer=text, answer_type=answer_type, context=context, meta=meta)


# --------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------


def _derived_seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in ("rlvr", *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _task_specs(tasks: Any, default_answer_type: str) -> list[dict]:
    tasks = _to_plain(tasks)
    if not tasks:
        raise ValueError("data.tasks is empty: give at least one reasoning-gym task")
    specs = []
    for t in tasks:
        if isinstance(t, str):
            t = {"name": t}
        if not isinstance(t, Mapping) or not t.get("name"):
            raise ValueError(f"bad reasoning-gym task spec {t!r}: expected {{'name': ..., 'weight': ..., 'kwargs': {{...}}}}")
        extra = set(t) - {"name", "weight", "kwargs", "answer_type", "label"}
        if extra:
            raise ValueError(
                f"task {t['name']!r}: unknown keys {sorted(extra)} (known: name, label, weight, kwargs, answer_type)"
            )
        weight = float(t.get("weight", 1.0))
        if not weight > 0:
            raise ValueError(f"task {t['name']!r}: weight must be positive, got {weight}")
        kwargs = dict(t.get("kwargs") or {})
        for k in ("seed", "size"):
            if k in kwargs:
                raise ValueError(f"task {t['name']!r}: set {k!r} on the data split, not in the task kwargs")
        specs.append(
            {
                "name": str(t["name"]),
                "label": str(t.get("label") or t["name"]),
                "weight": weight,
                "kwargs": kwargs,
                "answer_type": t.get("answer_type", default_answer_type),
            }
        )
    labels = [s["label"] for s in specs]
    if len(labels) != len(set(labels)):
        raise ValueError(f"duplicate reasoning-gym task labels in {labels}: give each level of a task its own 'label'")
    return specs


def _load_reasoning_gym(cfg: DataSplitConfig, exclude: set[str] | None) -> list[Problem]:
    import reasoning_gym

    specs = _task_specs(cfg.tasks, cfg.answer_type)
    for s in specs:
        if s["answer_type"] not in _answer_types():
            raise ValueError(f"task {s['name']!r}: unknown answer_type {s['answer_type']!r}; expected one of {_answer_types()}")
    size = int(cfg.size)
    if size <= 0:
        raise ValueError(f"data.size must be positive, got {size}")
    weights = [s["weight"] for s in specs]
    errors = _RowErrors(f"reasoning_gym(seed={cfg.seed})", cfg.skip_bad_rows)

    # Generate in rounds: items are a pure function of (derived seed, index),
    # and the task draw is a fixed sequence, so a bigger round only appends.
    budget = size
    max_budget = 8 * size + 64
    while True:
        datasets = {
            s["label"]: reasoning_gym.create_dataset(
                s["name"], size=budget, seed=_derived_seed(s["label"], cfg.seed), **s["kwargs"]
            )
            for s in specs
        }
        rng = random.Random(_derived_seed("mix", cfg.seed))
        counters = {s["label"]: 0 for s in specs}
        out: list[Problem] = []
        errors.skipped = 0
        for _ in range(budget):
            spec = specs[rng.choices(range(len(specs)), weights=weights, k=1)[0]] if len(specs) > 1 else specs[0]
            name = spec["label"]
            idx = counters[name]
            counters[name] += 1
            item = datasets[name][idx]
            if exclude and item.get("question") in exclude:
                continue
            p = _make_problem(
                f"{name}/{cfg.seed}/{idx}", item.get("question"), item.get("answer"), spec["answer_type"], errors,
                f"task {name} item {idx}",
            )
            if p is not None:
                out.append(p)
                if len(out) == size:
                    break
        if len(out) == size or budget >= max_budget:
            break
        budget = min(max_budget, 2 * budget)
    if len(out) < size:
        log.warning(
            "reasoning_gym(seed=%s): only %d of %d problems after excluding %d questions and skipping bad rows",
            cfg.seed, len(out), size, len(exclude or ()),
        )
    errors.summary(len(out))
    return out


def _read_rows(path: str, errors: _RowErrors) -> Iterable[tuple[int, str, Any]]:
    """Yield (row index, row label, record) for every record in the file."""
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        for i, rec in enumerate(_read_saved_dataset(path)):
            yield i, f"row {i}", rec
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                label = f"row {i} (line {i + 1})"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    errors.bad(label, f"invalid JSON: {e.msg} at column {e.colno}")
                    continue
                yield i, label, rec
    elif suffix == ".json":
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of objects, got {type(data).__name__}")
        for i, rec in enumerate(data):
            yield i, f"row {i}", rec
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            pq = None
        if pq is not None:
            records = pq.read_table(path).to_pylist()
        else:
            try:
                import pandas as pd
            except ImportError:
                raise ImportError(
                    f"{path}: reading Parquet needs pyarrow (or pandas with a Parquet engine); "
                    "install pyarrow, or convert the file to JSONL"
                ) from None
            records = pd.read_parquet(path).to_dict(orient="records")
        for i, rec in enumerate(records):
            yield i, f"row {i}", rec
    else:
        raise ValueError(f"{path}: unsupported data file type {suffix!r}; expected one of {FILE_SUFFIXES}")


def _read_saved_dataset(path: str) -> Iterable[dict]:
    """Rows of a folder written by ``datasets.Dataset.save_to_disk``."""
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(path)
    except FileNotFoundError as e:
        raise DataError(f"{path} is a folder but not one written by datasets' save_to_disk: {e}") from None
    if isinstance(ds, DatasetDict):
        raise DataError(f"{path} holds a DatasetDict with splits {list(ds)}: point data.*.path at one of them, e.g. {path}/{next(iter(ds), 'train')}")
    yield from ds


def _boxed_answer(solution: Any) -> Any:
    """A TRL ``solution``: the content of its last \\boxed{} when it has one."""
    if isinstance(solution, str):
        from rlvr.rewards import extract_boxed

        boxed = extract_boxed(solution)
        if boxed:
            return boxed[-1]
    return solution


def _detect_format(rec: Mapping, cfg: DataSplitConfig) -> str:
    if "reward_model" in rec:
        return "verl"
    if isinstance(rec.get("prompt"), (list, tuple)) or (cfg.answer_key not in rec and "solution" in rec):
        return "trl"
    return "rlvr"


def _row_fields(rec: Mapping, fmt: str, cfg: DataSplitConfig) -> tuple[Any, Any, Mapping | None] | str:
    """(prompt, answer, meta) of one row in format ``fmt``, or the reason it is unusable."""
    if fmt == "verl":
        rm = rec.get("reward_model")
        if "prompt" not in rec:
            return f"verl row without 'prompt' (keys: {sorted(rec)[:10]})"
        if not isinstance(rm, Mapping) or "ground_truth" not in rm:
            return f"verl row needs reward_model.ground_truth, got reward_model={str(rm)[:80]!r}"
        return rec["prompt"], rm["ground_truth"], {"data_source": rec.get("data_source"), "extra_info": rec.get("extra_info")}
    if fmt == "trl":
        if "prompt" not in rec:
            return f"trl row without 'prompt' (keys: {sorted(rec)[:10]})"
        for key in ("answer", "solution"):
            if key in rec:
                answer = rec[key] if key == "answer" else _boxed_answer(rec[key])
                return rec["prompt"], answer, {k: v for k, v in rec.items() if k != "prompt"}
        return f"trl row needs 'answer' or 'solution' (keys: {sorted(rec)[:10]})"
    if cfg.prompt_key not in rec:
        return f"missing prompt key {cfg.prompt_key!r} (keys: {sorted(rec)[:10]})"
    if cfg.answer_key not in rec:
        return f"missing answer key {cfg.answer_key!r} (keys: {sorted(rec)[:10]})"
    return rec[cfg.prompt_key], rec[cfg.answer_key], None


def _load_file(cfg: DataSplitConfig, exclude: set[str] | None) -> list[Problem]:
    if not cfg.path:
        raise ValueError("data.source=file needs data.path (a .jsonl, .json or .parquet file, or a save_to_disk folder)")
    path = os.path.expanduser(str(cfg.path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path} (cwd: {os.getcwd()})")
    if cfg.answer_type not in _answer_types():
        raise ValueError(f"unknown answer_type {cfg.answer_type!r}; expected one of {_answer_types()}")
    if cfg.format not in FORMATS:
        raise ValueError(f"unknown data format {cfg.format!r}; expected one of {FORMATS}")
    errors = _RowErrors(path, cfg.skip_bad_rows)
    base = os.path.basename(os.path.normpath(path))
    out: list[Problem] = []
    fmt = None if cfg.format == "auto" else cfg.format
    for i, label, rec in _read_rows(path, errors):
        if not isinstance(rec, Mapping):
            errors.bad(label, f"expected an object (a row), got {type(rec).__name__}")
            continue
        if fmt is None:
            fmt = _detect_format(rec, cfg)
            log.info("%s: %s rows (data format detected from %s; set format= to override)", path, fmt, label)
        fields = _row_fields(rec, fmt, cfg)
        if isinstance(fields, str):
            errors.bad(label, fields)
            continue
        question, answer, meta = fields
        p = _make_problem(f"file:{base}:{i}", question, answer, cfg.answer_type, errors, label, meta)
        if p is None or (exclude and p.question in exclude):
            continue
        out.append(p)
    errors.summary(len(out))
    if not out:
        raise DataError(f"{path}: no usable problems")
    return out


_CHAMP_MATH_WORDS = {"sqrt", "floor", "ceil", "sum", "prod", "log", "exp", "sin", "cos", "tan", "mod"}
_CHAMP_SHORT_WORDS = {"or", "no", "is", "of", "if", "at", "as", "be", "by", "in", "on", "to"}


def _is_prose_word(w: str) -> bool:
    w = w.lower()
    return w in _CHAMP_SHORT_WORDS or (len(w) >= 3 and w not in _CHAMP_MATH_WORDS)


def _champ_answer(raw: str) -> tuple[str, str]:
    """(gold answer, answer_type) for a CHAMP answer.

    CHAMP answers are free text.  Equivalent forms are reduced to the last,
    simplest one ("C(10, 5), or equivalently 252" -> "252"); approximations
    and "(i.e., ...)" glosses are dropped; "K is the only possible value" and
    "The limit exists and is equal to X" keep K / X.  The result is a
    ``number`` if it is a numeric literal, an ``expression`` if it is made of
    math only, else a ``string`` (normalised exact match: "Yes", "No",
    "No integer solutions", ...).  An ``expression`` that the verifier cannot
    parse becomes a ``string`` too (see :func:`_champ_rows`).
    """
    try:
        from rlvr.rewards import parse_numeric_literal
    except ImportError:  # pragma: no cover - stand-in if rlvr.rewards is absent

        def parse_numeric_literal(text):
            return _FALLBACK_NUMBER.fullmatch(text.strip().replace(",", ""))

    a = raw.strip()
    m = re.search(r",?\s*or (?:equivalently|an equivalent form such as)\s+(.+)$", a)
    if m:
        a = m.group(1).strip()
    a = re.sub(r",?\s*or approximately .*$", "", a)
    a = re.sub(r"\s*\((?:i\.e\.|none of|no such).*\)\s*$", "", a).strip()
    for pat in (
        r"(.+?) is the only possible value",
        r"The limit exists and is equal to (.+)",
        r"The only possible value for the limit is (.+)",
    ):
        m = re.fullmatch(pat, a)
        if m:
            a = m.group(1).strip()
            break
    if parse_numeric_literal(a) is not None:
        return a, "number"
    prose = any(_is_prose_word(w) for w in re.findall(r"[A-Za-z]+", a))
    return a, ("string" if prose else "expression")


@functools.lru_cache(maxsize=1)
def _champ_rows() -> tuple[tuple[str, Any, str | None, str | None, str | None], ...]:
    """(identifier, question, answer, answer_type, error) per CHAMP problem,
    checked once per process (the expression check runs math-verify)."""
    try:
        import champ_dataset
    except ImportError:
        raise ImportError("data.source=champ needs the champ-dataset package") from None
    rows = []
    for ident, prob in champ_dataset.load("v0").problems.items():
        if not isinstance(prob.answer, str) or not prob.answer.strip():
            rows.append((ident, prob.text, None, None, "missing answer"))
            continue
        answer, answer_type = _champ_answer(prob.answer)
        reason = _check_answer(answer, answer_type)
        if reason is not None and answer_type == "expression":
            # plain-text math the verifier's LaTeX parser rejects
            # ("2^floor(n/2)*floor(n/2)!"): compare as a normalised string
            answer_type = "string"
            reason = _check_answer(answer, answer_type)
        if reason is not None:
            reason = f"answer {answer[:80]!r} cannot be used as answer_type={answer_type!r}: {reason}"
        rows.append((ident, prob.text, answer, answer_type, reason))
    return tuple(rows)


def _load_champ(cfg: DataSplitConfig, exclude: set[str] | None) -> list[Problem]:
    errors = _RowErrors("champ-dataset v0", cfg.skip_bad_rows)
    out: list[Problem] = []
    for ident, question, answer, answer_type, reason in _champ_rows():
        if exclude and question in exclude:
            continue
        row = f"problem {ident}"
        if not isinstance(question, str) or not question.strip():
            errors.bad(row, "missing or empty prompt")
        elif reason is not None:
            errors.bad(row, reason)
        else:
            out.append(Problem(uid=f"champ:{ident}", question=question, answer=answer, answer_type=answer_type))
    errors.summary(len(out))
    if cfg.limit is not None and 0 <= int(cfg.limit) < len(out):
        # CHAMP is ordered by category (Combinatorics first): a plain prefix
        # would be one category.  Take a seeded sample, kept in file order.
        keep = sorted(random.Random(_derived_seed("champ", cfg.seed)).sample(range(len(out)), int(cfg.limit)))
        out = [out[i] for i in keep]
    return out


def load_problems(cfg: DataSplitConfig | Mapping, exclude: set[str] | None = None) -> list[Problem]:
    """Load one split.  ``exclude``: question texts to leave out (e.g. the
    training questions, so that a held-out split is truly held out)."""
    cfg = _as_config(cfg)
    if cfg.source == "reasoning_gym":
        problems = _load_reasoning_gym(cfg, exclude)
    elif cfg.source == "file":
        problems = _load_file(cfg, exclude)
    elif cfg.source == "champ":
        problems = _load_champ(cfg, exclude)
    else:
        raise ValueError(f"unknown data source {cfg.source!r}; known sources: {list(SOURCES)}")
    if cfg.limit is not None:
        if int(cfg.limit) < 0:
            raise ValueError(f"data.limit must be >= 0, got {cfg.limit}")
        problems = problems[: int(cfg.limit)]
    return problems


# --------------------------------------------------------------------------
# chat messages
# --------------------------------------------------------------------------


def build_messages(problem: Problem, system_prompt: str | None = None, fewshot: list[dict] | None = None) -> list[dict]:
    """Chat messages: a system turn (the data's own, else ``system_prompt``), few-shot user/assistant
    pairs (``{"question": ..., "response": ...}`` each), the data's earlier turns, then the question."""
    messages: list[dict] = []
    data_system = [content for role, content in problem.context if role == "system"]
    if data_system:
        messages.append({"role": "system", "content": "\n\n".join(data_system)})
    elif system_prompt:
        messages.append({"role": "system", "content": str(system_prompt)})
    for i, shot in enumerate(_to_plain(fewshot) or []):
        if not isinstance(shot, Mapping) or not isinstance(shot.get("question"), str) or not isinstance(shot.get("response"), str):
            raise ValueError(f"fewshot[{i}] must be {{'question': str, 'response': str}}, got {shot!r}")
        messages.append({"role": "user", "content": shot["question"]})
        messages.append({"role": "assistant", "content": shot["response"]})
    messages.extend({"role": role, "content": content} for role, content in problem.context if role != "system")
    messages.append({"role": "user", "content": problem.question})
    return messages


# --------------------------------------------------------------------------
# prompt stream
# --------------------------------------------------------------------------


def _fingerprint(problems: list[Problem]) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(p.uid.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class PromptStream:
    """Endless, seeded, resumable stream over a list of problems.

    Each epoch is a permutation drawn with (seed, epoch) (the identity when
    ``shuffle=False``).  A batch may span an epoch boundary: the next epoch
    starts inside it, so there is never a silent empty epoch.  ``epoch`` is
    the epoch the next problem comes from and ``position`` how many problems
    of that epoch were already served; the rollover happens as soon as an
    epoch is used up.
    """

    def __init__(self, problems: list[Problem], seed: int, shuffle: bool = True):
        if not problems:
            raise ValueError("PromptStream needs at least one problem")
        self._problems = list(problems)
        self._seed = int(seed)
        self._shuffle = bool(shuffle)
        self._epoch = 0
        self._position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self._problems)))
        if self._shuffle:
            random.Random(f"rlvr-prompt-stream:{self._seed}:{epoch}").shuffle(order)
        return order

    def __len__(self) -> int:
        return len(self._problems)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        return self._position

    def next(self, k: int) -> list[Problem]:
        if k < 0:
            raise ValueError(f"batch size must be >= 0, got {k}")
        out = []
        for _ in range(k):
            out.append(self._problems[self._order[self._position]])
            self._position += 1
            if self._position == len(self._order):
                self._epoch += 1
                self._position = 0
                self._order = self._permutation(self._epoch)
        return out

    def state_dict(self) -> dict:
        return {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self._seed,
            "shuffle": self._shuffle,
            "num_problems": len(self._problems),
            "fingerprint": _fingerprint(self._problems),
        }

    def load_state_dict(self, d: dict) -> None:
        mine = self.state_dict()
        for key in ("num_problems", "fingerprint", "seed", "shuffle"):
            if key in d and d[key] != mine[key]:
                raise ValueError(
                    f"PromptStream state does not match this stream: {key} is {d[key]!r} in the state, "
                    f"{mine[key]!r} here (a different dataset or seed than the checkpoint's)"
                )
        epoch, position = int(d["epoch"]), int(d["position"])
        if epoch < 0 or not 0 <= position < len(self._problems):
            raise ValueError(f"bad PromptStream state: epoch={epoch}, position={position}, {len(self._problems)} problems")
        self._epoch = epoch
        self._position = position
        self._order = self._permutation(epoch)


def prompt_renderer(cfg: DictConfig, model_path: str):
    """Problem -> prompt text: system prompt, few-shot turns and question through the chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    fewshot = OmegaConf.to_container(cfg.data.fewshot, resolve=True) if cfg.data.fewshot else None

    def render(problem: Problem) -> str:
        messages = build_messages(problem, cfg.data.system_prompt, fewshot)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return render
