"""A reward term as the user writes it (``reward.terms`` in config), checked, and which terms decide "correct"."""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from rlvr.rewards.builtin import CHECK_OPTIONS, DECIDES_CORRECTNESS, REWARD_FUNCTIONS
from rlvr.rewards.calling import REWARD_STYLES


@dataclass
class RewardSpec:
    fn: str = "math"  # builtin name or "module:function"
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    style: str = "rlvr"  # the function's signature: rlvr | trl | verl (rlvr.rewards.call_reward)
    # Does this term say whether the answer is right? None: math and exact do, format does not,
    # and a module:function does when it is the only candidate (see `correctness_terms`).
    correctness: bool | None = None


def coerce_spec(t: Any) -> RewardSpec:
    """A reward term (RewardSpec, dict or bare name) checked: a known builtin or module:function, a finite weight, a known style."""
    if isinstance(t, RewardSpec):
        spec = t
    elif isinstance(t, str):
        spec = RewardSpec(fn=t)
    elif isinstance(t, dict):
        known = [f.name for f in dataclasses.fields(RewardSpec)]
        unknown = sorted(set(t) - set(known))
        if unknown:
            raise ValueError(f"unknown reward term keys {unknown}; known: {', '.join(known)}")
        spec = RewardSpec(**t)
    else:
        raise TypeError(f"reward term must be a RewardSpec, dict or str, got {type(t).__name__}")
    if not isinstance(spec.fn, str) or not spec.fn.strip():
        raise ValueError(f"reward term fn must be a non-empty string, got {spec.fn!r}")
    if spec.fn not in REWARD_FUNCTIONS:
        mod, _, attr = spec.fn.partition(":")
        if not mod or not attr:
            raise ValueError(f"reward fn {spec.fn!r}: expected one of {sorted(REWARD_FUNCTIONS)} or 'module:function'")
    weight = float(spec.weight)
    if not math.isfinite(weight):
        raise ValueError(f"reward weight must be finite, got {spec.weight!r}")
    kwargs = dict(spec.kwargs or {})
    if spec.style not in REWARD_STYLES:
        raise ValueError(f"reward term {spec.fn!r}: unknown style {spec.style!r}; known: {', '.join(REWARD_STYLES)}")
    if spec.correctness not in (None, True, False):
        raise ValueError(f"reward term {spec.fn!r}: correctness must be true, false or null, got {spec.correctness!r}")
    if spec.fn in REWARD_FUNCTIONS:
        _check_builtin_kwargs(spec.fn, kwargs)
    return RewardSpec(fn=spec.fn, weight=weight, kwargs=kwargs, style=spec.style, correctness=spec.correctness)


def _check_builtin_kwargs(name: str, kwargs: dict) -> None:
    """A builtin's options, checked before any run starts: a misspelt key no longer falls back to its
    default unseen, and a bad value no longer scores every item 0 mid-run."""
    fn = REWARD_FUNCTIONS[name]
    signature = inspect.signature(fn)
    options = list(signature.parameters)[3:]  # after completion, answer, answer_type
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"reward term {name!r}: unknown kwargs {unknown}; its options: {', '.join(options)}")
    if name in CHECK_OPTIONS:
        bound = signature.bind("", "", **kwargs)
        bound.apply_defaults()
        CHECK_OPTIONS[name](**{k: bound.arguments[k] for k in options})


def correctness_terms(terms: list[RewardSpec]) -> list[int]:
    """The indices of the terms that decide "correct": an answer is correct when each scores >= 1.

    A term's ``correctness`` says it; unset, the builtins say it (math and exact decide, format
    shapes), and a user's module:function decides when it is the only one that could (several
    unmarked ones with no deciding builtin are an error). The order of the terms never matters.
    No deciding term at all is an error naming the setting.
    """
    said = [t.correctness if t.correctness is not None else DECIDES_CORRECTNESS.get(t.fn) for t in terms]
    if not any(said):
        unmarked = [i for i, s in enumerate(said) if s is None]
        if len(unmarked) > 1:  # which of them says an answer is right is the user's to say, not the order's
            names = ", ".join(terms[i].fn for i in unmarked)
            raise ValueError(f"several reward terms could decide correctness ({names}): set correctness: true on the one(s) that say an answer is right")
        said = [True if s is None else s for s in said]
    deciding = [i for i, s in enumerate(said) if s]
    if not deciding:
        names = ", ".join(t.fn for t in terms)
        raise ValueError(f"no reward term decides correctness ({names}): set correctness: true on the term that says an answer is right")
    return deciding
