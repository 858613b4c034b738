"""The ``file`` source: a local ``.jsonl`` (one object a line), ``.json`` (a list of objects) or
``.parquet`` file, or a folder written by ``datasets.Dataset.save_to_disk``.

Row formats (``format``, detected per file by default):

- ``rlvr``: a prompt column and an answer column (``prompt_key``, ``answer_key``);
- ``verl``: ``prompt`` as chat messages, ``reward_model.ground_truth``, ``data_source`` and
  ``extra_info`` (kept for reward functions);
- ``trl``: ``prompt`` as a string or chat messages (or OpenAI's ``messages``, up to its last user
  turn), with ``answer`` or ``solution`` (whose last
  ``\\boxed{}`` is the answer), or, for code, ``tests``; the other columns are kept for reward functions.

A chat prompt's last turn is the question; the turns before it (a system message among them wins
over ``data.system_prompt``) are rendered with the model's chat template. GSM8K answers (a solution
ending in ``#### 42``) keep what follows the last ``####``. For ``answer_type=code`` the answer is
the tests: a JSON string, or a dict or list that is stored as one (see :mod:`rlvr.rewards.code`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Iterable

from rlvr.data.problems import DataError, DataSplitConfig, Problem, RowErrors, check_answer_type, make_problem, seeded_sample

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
FORMATS = ("auto", "rlvr", "verl", "trl")


def _read_rows(path: str, errors: RowErrors) -> Iterable[tuple[int, str, Any]]:
    """Yield (row index, row label, record) for every record in the file."""
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        for i, rec in enumerate(_read_saved_dataset(path)):
            yield i, f"row {i}", rec
    elif suffix == ".jsonl":
        yield from _read_json_lines(path, errors)
    elif suffix == ".json":
        with open(path, encoding="utf-8-sig") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                if e.msg != "Extra data" or not e.doc.lstrip("\ufeff \t\r\n").startswith("{"):
                    raise DataError(f"{path}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
                data = None  # objects one a line: what datasets' to_json and pandas' lines=True write to a .json
        if data is None:
            yield from _read_json_lines(path, errors)
            return
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json data file must hold a list of objects, or objects one a line (as datasets' "
                            f"to_json writes), got one {type(data).__name__} (a one-row JSON Lines file: name it .jsonl)")
        for i, rec in enumerate(data):
            yield i, f"row {i}", rec
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            pq = None
        if pq is not None:  # in batches: every row's dict at once beside the table took 1.7x a JSONL file's peak
            parquet = pq.ParquetFile(path)
            records = _narrow_floats_as_written((r for batch in parquet.iter_batches(batch_size=8192) for r in batch.to_pylist()),
                                                {f.name: str(f.type) for f in parquet.schema_arrow})
            if b"huggingface" in (parquet.schema_arrow.metadata or {}):  # written by datasets: its ClassLabels are named there
                from datasets import Features

                records = _class_labels_as_names(records, Features.from_arrow_schema(parquet.schema_arrow))
        else:
            try:
                import pandas as pd
            except ImportError:
                raise ImportError(
                    f"{path}: reading Parquet needs pyarrow (or pandas with a Parquet engine); "
                    "install pyarrow, or convert the file to JSONL"
                ) from None
            frame = pd.read_parquet(path)
            records = _narrow_floats_as_written(frame.to_dict(orient="records"), {str(name): str(dtype) for name, dtype in frame.dtypes.items()})
        for i, rec in enumerate(records):
            yield i, f"row {i}", rec
    else:
        raise ValueError(f"{path}: unsupported data file type {suffix!r}; expected one of {FILE_SUFFIXES}")


def _read_json_lines(path: str, errors: RowErrors) -> Iterable[tuple[int, str, Any]]:
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first row
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


def _class_labels_as_names(records: Iterable[dict], features: Mapping) -> Iterable[dict]:
    """The records, each ``datasets.ClassLabel`` column's index as its name: cais/mmlu's `answer`
    is one (0 for "A"), and read as its index it was refused as a choice, or kept as the gold "0"."""
    labels = {name: f for name, f in features.items() if type(f).__name__ == "ClassLabel"}
    for rec in records:
        for name, feature in labels.items():
            value = rec.get(name)
            if isinstance(value, int) and 0 <= value < feature.num_classes:
                rec[name] = feature.int2str(value)
        yield rec


def _narrow_floats_as_written(records: Iterable[dict], column_types: dict[str, str]) -> Iterable[dict]:
    """The records, each float32 or float16 column's values as their shortest text at that width reads:
    Arrow, pandas and datasets widen them to float64, and 0.1 became the gold answer
    0.10000000149011612 (float16: 0.0999755859375), which no answer could match. ``column_types``:
    each column's type name as Arrow, numpy or datasets spells it."""
    import numpy as np

    widths = {"float": np.float32, "float32": np.float32, "halffloat": np.float16, "float16": np.float16}
    narrow = {name: widths[kind] for name, kind in column_types.items() if kind in widths}
    for rec in records:
        for name, width in narrow.items():
            value = rec.get(name)
            if isinstance(value, float) and np.isfinite(value):
                rec[name] = float(np.format_float_positional(width(value), unique=True, trim="-"))
        yield rec


def _read_saved_dataset(path: str) -> Iterable[dict]:
    """Rows of a folder written by ``datasets.Dataset.save_to_disk``."""
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(path)
    except FileNotFoundError as e:
        raise DataError(f"{path} is a folder but not one written by datasets' save_to_disk: {e}") from None
    if isinstance(ds, DatasetDict):
        raise DataError(f"{path} holds a DatasetDict with splits {list(ds)}: point data.*.path at one of them, e.g. {path}/{next(iter(ds), 'train')}")
    rows = _narrow_floats_as_written(ds, {name: getattr(feature, "dtype", "") for name, feature in ds.features.items()})
    yield from _class_labels_as_names(rows, ds.features)


def _boxed_answer(solution: Any) -> Any:
    """A TRL ``solution``: the content of its last \\boxed{} when it has one."""
    if isinstance(solution, str):
        from rlvr.rewards import extract_boxed

        boxed = extract_boxed(solution)
        if boxed:
            return boxed[-1]
    return solution


def _openai_messages(rec: Mapping) -> Any:
    """An OpenAI-style ``messages`` conversation as the prompt: its turns up to the last user turn (a
    reference reply after it is not shown to the model)."""
    messages = rec["messages"]
    if not isinstance(messages, (list, tuple)):
        return messages  # make_problem names what is wrong with it
    users = [i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "user"]
    return list(messages[: users[-1] + 1]) if users else list(messages)


def _detect_format(rec: Mapping, cfg: DataSplitConfig) -> str:
    named = (cfg.prompt_key, cfg.answer_key) != (DataSplitConfig.prompt_key, DataSplitConfig.answer_key)
    if named and cfg.prompt_key in rec and cfg.answer_key in rec:
        return "rlvr"  # columns the user named win over the other formats' fixed ones (they were ignored)
    if "reward_model" in rec:
        return "verl"
    if isinstance(rec.get("prompt"), (list, tuple)) or isinstance(rec.get("messages"), (list, tuple)) or (cfg.answer_key not in rec and ("solution" in rec or "tests" in rec)):
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
        prompt = _openai_messages(rec) if "prompt" not in rec and "messages" in rec else rec.get("prompt")
        if prompt is None:
            return f"trl row without 'prompt' or 'messages' (keys: {sorted(rec)[:10]})"
        meta = {k: v for k, v in rec.items() if k not in ("prompt", "messages")}
        if cfg.answer_type == "code" and "tests" in rec:
            return prompt, rec["tests"], meta
        for key in ("answer", "solution"):
            if key in rec:
                answer = rec[key] if key == "answer" else _boxed_answer(rec[key])
                return prompt, answer, meta
        return f"trl row needs 'answer' or 'solution' (keys: {sorted(rec)[:10]})"
    if cfg.prompt_key not in rec:
        return f"missing prompt key {cfg.prompt_key!r} (keys: {sorted(rec)[:10]}; set data.*.prompt_key= to the prompt's column)"
    if cfg.answer_key not in rec:
        return f"missing answer key {cfg.answer_key!r} (keys: {sorted(rec)[:10]}; set data.*.answer_key= to the answer's column)"
    # the other columns, as in the trl format: a row {prompt, answer, difficulty} is both formats, and
    # a trl-style reward taking `difficulty` failed on every item when auto-detection said rlvr
    # (the answer column is not among them: a trl-style reward gets the parsed answer, as for a two-column row)
    others = {k: v for k, v in rec.items() if k not in (cfg.prompt_key, cfg.answer_key)}
    return rec[cfg.prompt_key], rec[cfg.answer_key], others or None


def load_file(cfg: DataSplitConfig, exclude: set[str] | None) -> list[Problem]:
    if not cfg.path:
        raise ValueError("data.source=file needs data.path (a .jsonl, .json or .parquet file, or a save_to_disk folder)")
    path = os.path.expanduser(str(cfg.path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path} (cwd: {os.getcwd()})")
    check_answer_type(cfg.answer_type)
    if cfg.format not in FORMATS:
        raise ValueError(f"unknown data format {cfg.format!r}; expected one of {FORMATS}")
    errors = RowErrors(path, cfg.skip_bad_rows)
    start = time.perf_counter()
    base = os.path.basename(os.path.normpath(path))
    out: list[Problem] = []
    fmt = None if cfg.format == "auto" else cfg.format
    excluded, answers, conflicts = 0, {}, []
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
        p = make_problem(f"file:{base}:{i}", question, answer, cfg.answer_type, errors, label, meta)
        if p is not None and exclude and p.question in exclude:
            excluded += 1
        elif p is not None:
            out.append(p)
            first = answers.setdefault(p.question, (label, p.answer))
            if first[1] != p.answer:
                conflicts.append((first[0], label))
    if conflicts:  # kept (a dataset may mean it), but a model cannot be right on both
        log.warning("%s: %d rows repeat an earlier row's question with another answer, e.g. %s and %s", path, len(conflicts), *conflicts[0])
    errors.summary(len(out))
    if not out:
        why = f" ({excluded} rows left out as training questions: is this the training file?)" if excluded else ""
        raise DataError(f"{path}: no usable problems{why}")
    if cfg.limit is not None and 0 <= int(cfg.limit) < len(out):
        log.info("%s: a seeded sample of %d of its %d problems (limit; eval.size for the held-out split)", path, int(cfg.limit), len(out))
        out = seeded_sample(out, int(cfg.limit), "file-limit", cfg.seed)
    log.info("%s: %d problems in %.1f s%s", path, len(out), time.perf_counter() - start,
             f" ({excluded} rows left out as training questions)" if excluded else "")
    return out
