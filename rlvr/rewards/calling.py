"""Calling a reward term: the signatures of rlvr, TRL and verl, and loading ``module:function``."""

from __future__ import annotations

import importlib
import math
import numbers
from typing import Callable

from rlvr.rewards.builtin import REWARD_FUNCTIONS

REWARD_STYLES = ("rlvr", "trl", "verl")


class BadRewardValue(ValueError):
    """A reward function returned something other than one finite number for the completion."""


def _one_number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadRewardValue(f"{what} returned {type(value).__name__} {str(value)[:40]!r}, not a number")
    v = float(value)
    if not math.isfinite(v):
        raise BadRewardValue(f"{what} returned {v}, not a finite number")
    return v


# what a term's ``output`` may carry back (a tool's result, which becomes a message to the model)
MAX_OUTPUT_CHARS = 4096


def _score_and_outcome(out, what: str) -> tuple[float, str | None, str | None]:
    """A number, or a dict with ``score``, an optional named ``outcome`` (such as ``wrong_answer``)
    and an optional text ``output``."""
    if isinstance(out, dict):
        if "score" not in out:
            raise BadRewardValue(f"{what} returned a dict without 'score' (keys: {sorted(out)[:8]})")
        outcome, output = out.get("outcome"), out.get("output")
        return (
            _one_number(out["score"], what),
            str(outcome)[:40] if outcome is not None else None,
            str(output)[:MAX_OUTPUT_CHARS] if output is not None else None,
        )
    return _one_number(out, what), None, None


def call_reward(
    fn: Callable, style: str, completion: str, answer: str, answer_type: str,
    prompt: str | list[dict] = "", meta: dict | None = None, kwargs: dict | None = None,
) -> tuple[float, str | None, str | None]:
    """One completion's reward from a term written in ``style``:

    - ``rlvr``: ``fn(completion, answer, answer_type, **kwargs) -> float``;
    - ``trl``:  ``fn(prompts=[prompt], completions=[completion], **{column: [value]}, **kwargs) -> [float]``
      (TRL's batched signature, called with a batch of one; the columns are the row's other fields,
      and ``answer`` when the row has none). A chat row's prompt (``prompt`` a list of messages) comes
      as its messages and the completion as ``[{"role": "assistant", "content": completion}]``, as
      TRL passes a conversational dataset's;
    - ``verl``: ``fn(data_source, completion, ground_truth, extra_info, **kwargs) -> float | {"score": float, ...}``.

    Any style may return ``{"score": float, "outcome": str, "output": str}`` instead of the float, to
    name what happened (``code_tests`` does: ``passed``, ``wrong_answer``, ...) and to send text back
    (a tool's result does). Returns (score, outcome or None, output or None).
    Raises :class:`BadRewardValue` for None, NaN, a non-number or a list of the wrong length.
    """
    kwargs = kwargs or {}
    meta = meta or {}
    if style == "rlvr":
        return _score_and_outcome(fn(completion, answer, answer_type, **kwargs), "reward function")
    if style == "trl":
        columns = {k: [v] for k, v in meta.items() if k not in ("prompts", "completions", *kwargs)}  # the term's kwargs win
        columns.setdefault("answer", [answer])
        if isinstance(prompt, list):
            completion = [{"role": "assistant", "content": completion}]
        out = fn(prompts=[prompt], completions=[completion], **columns, **kwargs)
        if hasattr(out, "tolist") and hasattr(out, "__len__"):  # TRL iterates what a reward returns: numpy's arrays work there
            out = out.tolist()
        if not isinstance(out, (list, tuple)) or len(out) != 1:
            got = f"{len(out)} values" if isinstance(out, (list, tuple)) else type(out).__name__
            raise BadRewardValue(f"trl-style reward returned {got} for 1 completion (expected a list of 1 float)")
        return _score_and_outcome(out[0], "trl-style reward")
    if style == "verl":
        out = fn(meta.get("data_source") or "", completion, answer, meta.get("extra_info"), **kwargs)
        return _score_and_outcome(out, "verl-style reward")
    raise ValueError(f"unknown reward style {style!r}; known: {REWARD_STYLES}")


def load_reward_fn(spec: str) -> Callable[..., float]:
    """A built-in name (``math``, ``exact``, ``format``) or ``module:function``
    (``function`` may be a dotted attribute path).  The function is called as
    ``fn(completion, answer, answer_type, **kwargs)`` and must return a
    finite number."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward function spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown reward function {spec!r}: use one of {sorted(REWARD_FUNCTIONS)} or 'module:function'"
        )
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"bad reward function spec {spec!r}: expected 'module:function'")
    obj = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return obj

