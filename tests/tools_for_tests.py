"""Tools (``module:function``) the multi-turn tests give the model; each misbehaves as its name says."""

from __future__ import annotations

import time


def echo(text: str) -> str:
    """Return the text unchanged.

    Args:
        text: what to return
    """
    return text


def boom(message: str) -> str:
    """Raise an error with the message.

    Args:
        message: the error's message
    """
    raise RuntimeError(message)


def hang(seconds: float) -> str:
    """Sleep for that long (past the sandbox's deadline).

    Args:
        seconds: how long to sleep
    """
    time.sleep(seconds)
    return "woke"


def hog(megabytes: int) -> str:
    """Allocate that much memory (past the sandbox's limit).

    Args:
        megabytes: how much to allocate
    """
    block = bytearray(megabytes * 2**20)
    return str(len(block))


def undocumented(x):
    return x


def halve(x: float) -> float:
    """Half of x.

    Args:
        x: a number
    """
    return x / 2


def deep(n: int) -> int:
    """Raise RecursionError, as a runaway recursion does.

    Args:
        n: ignored
    """
    raise RecursionError("maximum recursion depth exceeded")


def settings(flag: bool) -> dict:
    """Settings as a dict.

    Args:
        flag: a flag
    """
    return {"flag": flag, "none": None}


class NoStep:
    tools: list = []

    def reset(self, problem, messages):
        return messages
