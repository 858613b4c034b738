"""What crosses the sandbox's boundary: a request to score, its result, and how an item can fail."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

# Failures of an item that are the sandbox's verdict, not the reward function's ("error:<ExcType>").
ERROR_KINDS = ("timeout", "oom", "crash")
# A worker's exit status after its own MemoryError.
EXIT_OOM = 87


@dataclass
class ScoreRequest:
    completion: str
    answer: str
    answer_type: str = "number"
    prompt: str | list[dict] = ""  # the question, or a chat row's messages, for reward functions that read it (trl style)
    meta: dict | None = None  # the data row's other fields (verl: data_source, extra_info)

    @classmethod
    def for_problem(cls, completion: str, problem) -> "ScoreRequest":
        """A completion of a ``rlvr.data.Problem``."""
        prompt = problem.question
        if getattr(problem, "chat", False):
            prompt = [*({"role": r, "content": c} for r, c in problem.context), {"role": "user", "content": problem.question}]
        return cls(completion, problem.answer, problem.answer_type, prompt, dict(problem.meta or {}) or None)


@dataclass
class ScoreResult:
    reward: float  # combined weighted reward
    correct: bool  # every term that decides correctness (`correctness_terms`) scored >= 1.0
    error: str | None = None  # None, "timeout", "oom", "crash" or "error:<ExcType>"
    outcome: str | None = None  # what a term named (code_tests: passed, wrong_answer, compile_error, ...)
    output: str | None = None  # text a term sent back (a tool's result)
    detail: str | None = None  # an ``error:*``'s message, first line: "KeyError: 'answer'"


class VerifierStartError(RuntimeError):
    """The zygote or its workers could not start (bad reward spec, import
    error in a user module, memory limit too small, ...)."""


def _coerce_text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return ""
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", errors="replace")
    return str(x)


def coerce_request(r: Any) -> ScoreRequest:
    """A ScoreRequest (or a dict or tuple of completion, answer, answer_type) with text fields made strings."""
    if isinstance(r, ScoreRequest):
        prompt = r.prompt if isinstance(r.prompt, list) else _coerce_text(r.prompt)
        return ScoreRequest(_coerce_text(r.completion), _coerce_text(r.answer), str(r.answer_type or "number"), prompt, r.meta)
    if isinstance(r, dict):
        c, a, t = r.get("completion"), r.get("answer"), r.get("answer_type", "number")
    elif isinstance(r, (tuple, list)):
        c, a, t = (list(r) + [None, None, "number"])[:3]
    else:
        raise TypeError(f"cannot score a {type(r).__name__}; pass ScoreRequest objects")
    return ScoreRequest(_coerce_text(c), _coerce_text(a), str(t or "number"))


def kernel_oom_kills() -> int:
    """How many processes the kernel's OOM killer has killed since boot (``oom_kill`` in /proc/vmstat)."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def death_kind(exit_code: int, kernel_oom_killed: bool) -> str:
    """A worker that died without replying: its own MemoryError exit is ``oom``, and so is a SIGKILL
    we did not send while the kernel's OOM killer was at work; any other death (segfault, abort, a
    SIGKILL the item sent itself, ...) is a crash."""
    if exit_code == EXIT_OOM or (exit_code == -signal.SIGKILL and kernel_oom_killed):
        return "oom"
    return "crash"
