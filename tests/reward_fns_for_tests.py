"""User reward functions (``module:function``) used by the verifier tests.

Each one misbehaves on purpose when the completion asks it to, and otherwise
returns a fixed value, so a batch can mix healthy and failing items.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time


def length_bonus(completion: str, answer: str, answer_type: str = "number", scale: float = 0.01, **kwargs) -> float:
    return min(1.0, scale * len(completion))


def misbehave(completion: str, answer: str, answer_type: str = "number", **kwargs) -> float:
    """HANG_PY: pure-Python loop (interruptible); HANG_C: a C loop no signal
    can interrupt; SLEEP: blocks in a syscall; OOM: allocate until
    MemoryError; ABORT: os.abort(); SEGV: dereference NULL; RAISE: raise;
    EXIT: os._exit(3); NAN: return NaN; BURN:<ms>: compute for that many
    milliseconds of CPU time, then 1.0; SELF_KILL: SIGKILL itself; SPAWN, SPAWN_SETSID,
    DOUBLE_FORK: leave a sleeping process behind (a child, a child in a new session, a
    grandchild whose parent exited), then 1.0; SPAWN_HANG: leave one and hang. The pids of
    the processes left behind are written to the directory ``pid_dir``. Anything else: 1.0."""
    if completion in ("SPAWN", "SPAWN_SETSID", "DOUBLE_FORK", "SPAWN_HANG"):
        _leave_a_process(completion, kwargs["pid_dir"])
        if completion == "SPAWN_HANG":
            time.sleep(3600)
        return 1.0
    if completion == "SELF_KILL":
        os.kill(os.getpid(), signal.SIGKILL)
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


def _leave_a_process(how: str, pid_dir: str) -> None:
    if how == "DOUBLE_FORK":
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child starts a new session, forks the sleeper and exits
            os.setsid()
            grandchild = subprocess.Popen(["sleep", "3600"]).pid
            os.write(w, str(grandchild).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        left = int(os.read(r, 32))
        os.close(r)
        os.close(w)
    else:
        left = subprocess.Popen(["sleep", "3600"], start_new_session=how == "SPAWN_SETSID").pid
    with open(os.path.join(pid_dir, f"{how}-{left}"), "w"):
        pass


_log = logging.getLogger("reward_fns_for_tests.loud")
_log.addHandler(logging.StreamHandler())  # bound to the stderr of import time, as a module's basicConfig is
_log.propagate = False


def loud(completion: str, answer: str, answer_type: str = "number", **kwargs) -> float:
    """Prints ``completion`` times 1 MB (a reward function's debugging left on), then 1.0. "QUIET":
    silences itself by putting its own sys.stdout in, as libraries are silenced; "BYTES": writes
    bytes through sys.stdout.buffer."""
    import sys

    if completion == "QUIET":
        sys.stdout = open(os.devnull, "w")
        return 1.0
    if completion == "BYTES":
        sys.stdout.buffer.write(b"bytes\n")
        return 1.0
    if completion == "LOG":  # through a handler made when this module was imported
        for _ in range(2):
            _log.warning("y" * 2**20)
        return 1.0
    for _ in range(int(completion)):
        print("x" * 2**20)
    return 1.0


def bad_return(completion: str, answer: str, answer_type: str = "number", **kwargs):
    return "not a number"


def trl_style(prompts, completions, answer, **kwargs):
    """TRL's batched signature. Completions that say BAD_* return what TRL users sometimes return by mistake."""
    out = []
    for prompt, completion, gold in zip(prompts, completions, answer):
        if completion == "BAD_NONE":
            out.append(None)
        elif completion == "BAD_NAN":
            out.append(float("nan"))
        elif completion == "BAD_RAISE":
            raise RuntimeError("reward model offline")
        else:
            out.append(1.0 if gold in completion and "?" in prompt else 0.0)
    if completions == ["BAD_LENGTH"]:
        return [0.0, 0.0]
    return out


def verl_style(data_source, solution_str, ground_truth, extra_info=None):
    """verl's compute_score: a dict with 'score' for one source, a float for the others."""
    if solution_str == "BAD_RAISE":
        raise RuntimeError("broken scorer")
    if solution_str == "BAD_NAN":
        return float("nan")
    correct = float(ground_truth in solution_str)
    if data_source == "openai/gsm8k":
        return {"score": correct + (extra_info or {}).get("bonus", 0.0), "acc": correct}
    return correct
