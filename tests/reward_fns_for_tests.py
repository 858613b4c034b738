"""User reward functions (``module:function``) used by the verifier tests.

Each one misbehaves on purpose when the completion asks it to, and otherwise
returns a fixed value, so a batch can mix healthy and failing items.
"""

from __future__ import annotations

import ctypes
import os
import time


def length_bonus(completion: str, answer: str, answer_type: str = "number", scale: float = 0.01, **kwargs) -> float:
    return min(1.0, scale * len(completion))


def misbehave(completion: str, answer: str, answer_type: str = "number", **kwargs) -> float:
    """HANG_PY: pure-Python loop (interruptible); HANG_C: a C loop no signal
    can interrupt; SLEEP: blocks in a syscall; OOM: allocate until
    MemoryError; ABORT: os.abort(); SEGV: dereference NULL; RAISE: raise;
    EXIT: os._exit(3); NAN: return NaN; BURN:<ms>: compute for that many
    milliseconds of CPU time, then 1.0; anything else: 1.0."""
    if completion.startswith("BURN:"):
        end = time.process_time() + int(completion[5:]) / 1000
        x = 0
        while time.process_time() < end:
            x += 1
        return 1.0
    if completion == "HANG_PY":
        while True:
            pass
    if completion == "HANG_C":
        # a huge integer power: one C call that SIGALRM cannot interrupt
        return float(len(str(9 ** (9**9))) > 0)
    if completion == "SLEEP":
        time.sleep(3600)
    if completion == "OOM":
        blocks = []
        while True:
            blocks.append(bytearray(64 * 2**20))
    if completion == "ABORT":
        os.abort()
    if completion == "SEGV":
        ctypes.string_at(0)
    if completion == "RAISE":
        raise KeyError("boom")
    if completion == "EXIT":
        os._exit(3)
    if completion == "NAN":
        return float("nan")
    return 1.0


def bad_return(completion: str, answer: str, answer_type: str = "number", **kwargs):
    return "not a number"
