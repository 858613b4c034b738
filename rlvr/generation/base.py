"""What every generator shares: the `Generator` protocol, what it returns (`Rollouts`), and the
counts a step logs from it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from rlvr.data import Problem
from rlvr.rollout.engines import SamplingConfig
from rlvr.types import Trajectory

VERIFIER_FAILURES = ("timeout", "oom", "crash", "error")  # error: a reward function raised or returned a non-number

log = logging.getLogger("rlvr")
_errors_reported: set[str] = set()  # each kind of reward error is shown once a run; the step's counts say how often


@dataclass
class Rollouts:
    trajectories: list[Trajectory]  # `group` is the index of the trajectory's problem
    counts: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: generate, verify, tools


class Generator(Protocol):
    def generate(self, problems: list[Problem], ns: list[int], sampling: SamplingConfig, seed: int) -> Rollouts:
        """``ns[i]`` scored rollouts of ``problems[i]``, drawn with ``seed``."""
        ...


def verifier_counts(vstats: dict) -> dict[str, float]:
    """The verifier's failures and named outcomes of one `score` call, as the step counts them.
    A reward function's error is logged with its message the first time its type appears."""
    for error, example in vstats.get("error_examples", {}).items():
        if error not in _errors_reported:
            _errors_reported.add(error)
            log.warning("a reward function failed on %d of %d items, scored 0: %r (counted in verifier_error; "
                        "shown once a run)", vstats["errors_by_type"][error], vstats.get("items", 0), example)
    items = vstats.get("items", 0)
    for kind in ("timeout", "oom", "crash"):  # a function that hangs or dies on every item: no error message to show
        if items and vstats.get(kind, 0) == items and kind not in _errors_reported:
            _errors_reported.add(kind)
            log.warning("every one of %d items of a verifier call ended in %s, scored 0 (verifier.timeout_s, verifier.memory_mb, "
                        "or a reward function that hangs or dies; counted in verifier_%s; shown once a run)", items, kind, kind)
    counts = {f"verifier_{kind}": vstats.get(kind, 0) for kind in VERIFIER_FAILURES}
    counts.update({f"verifier_outcome_{o}": n for o, n in vstats.get("outcomes", {}).items()})  # code_tests: passed, wrong_answer, ...
    for term, (total, n) in vstats.get("term_sums", {}).items():  # sums: a step adds up its calls (rounds, turns)
        counts[f"{TERM_SUM}{term}"], counts[f"{TERM_COUNT}{term}"] = total, n
    return counts


TERM_SUM, TERM_COUNT = "reward_term_sum/", "reward_term_count/"


def env_rates(counts: dict) -> dict[str, float]:
    """Per-episode means and shares from a step's summed `env/*` counts."""
    episodes = counts.get("env/episodes", 0)
    if not episodes:
        return {}
    calls = counts.get("env/tool_calls", 0)
    errors = sum(v for k, v in counts.items() if k.startswith("env/tool_errors/"))
    rates = {
        "env/turns_per_episode": counts.get("env/turns", 0) / episodes,
        "env/tool_calls_per_episode": calls / episodes,
        "env/tool_error_rate": errors / calls if calls else 0.0,
        "env/first_answer_accuracy": counts.get("env/first_answers_correct", 0) / episodes,  # before any feedback (env=retry)
    }
    rates.update({f"env/ended_share/{k.rsplit('/', 1)[1]}": v / episodes for k, v in counts.items() if k.startswith("env/ended/")})
    return rates
