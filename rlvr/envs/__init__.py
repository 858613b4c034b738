"""Environments for multi-turn episodes: what the model is told, what a turn leads to, what it earns.

An environment is any object with two methods and one attribute (SkyRL's ``init/step`` and the
verifiers library's environments are the models):

    tools: list[str]
        ``module:function`` specs the model may call. They run in the sandbox's worker processes
        (`rlvr.envs.tools.run_tool`), never in the driver, an engine or a learner.
    reset(problem, messages) -> list[dict]
        The episode's first chat messages, given the data's own (system prompt, few-shot turns, question).
    step(messages, scores) -> Step
        Called after each turn in which the model called no tool, once the verifier has scored it:
        ``messages`` is the conversation so far (the model's turn last), ``scores`` the verifier's
        `ScoreResult` of every such turn. Returns the next observation, or the end with the reward.

The generator (`rlvr.generation.MultiTurn`) owns everything else: the token ids, the loss mask,
tool calls and their errors, the limits (`env.max_turns`, `env.max_tokens`). Environments are
named in config (`env=calculator`), and a user's own is `env=custom env.name=my_module:MyEnv`,
constructed with `env.options` as keyword arguments (each added as `+env.options.level=3`).
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the sandbox's workers import this package (tools): no data or torch imports here
    from rlvr.data import Problem
    from rlvr.sandbox.messages import ScoreResult


@dataclass
class Step:
    """What follows a scored turn: ``observation`` (messages for the model; None ends the episode)
    and the reward and correctness the episode ends with if it ends here (by the environment or a limit)."""

    observation: list[dict] | None
    reward: float
    correct: bool


class Environment(Protocol):
    tools: list[str]

    def reset(self, problem: "Problem", messages: list[dict]) -> list[dict]: ...

    def step(self, messages: list[dict], scores: "list[ScoreResult]") -> Step: ...


def _registry() -> dict[str, str]:
    return {"calculator": "rlvr.envs.calculator:Calculator", "retry": "rlvr.envs.retry:Retry"}


def make_environment(name: str, options: dict | None = None, tools: list[str] | tuple = ()) -> Any:
    """A registered environment by name, or a user's ``module:Class``, built with ``options``; ``tools``
    (``module:function`` specs, config's `env.tools`) are added to its own."""
    spec = _registry().get(name, name)
    if ":" not in spec:
        raise ValueError(f"unknown environment {name!r}; known: {sorted(_registry())}, or give module:Class")
    module, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"environment {name!r}: cannot import {spec!r} ({type(e).__name__}: {e})") from e
    try:
        env = cls(**(options or {}))
    except TypeError as e:
        raise ValueError(f"environment {name!r} does not take env.options {sorted(options or {})}: {e}") from e
    for method in ("reset", "step"):
        if not callable(getattr(env, method, None)):
            raise ValueError(f"environment {name!r} ({spec}) has no {method}() method")
    env.tools = list(dict.fromkeys([*(getattr(env, "tools", None) or []), *tools]))
    return env


class WithDeadline:
    """An environment whose reset() and step() must return within ``timeout_s``: they run in the
    trainer's process (tools run in the sandbox, with limits of their own), where a call that never
    returned hung the run with no message. Each call runs on the caller's own thread (an environment
    may need the main thread: math-verify's signal.alarm, a sqlite connection); past its deadline
    the run stops (exit 1) with every thread's stack, the environment's line among them, written by
    `faulthandler` from a C thread, which needs no GIL (a catastrophic regex holds it)."""

    def __init__(self, env: Any, timeout_s: float, name: str):
        self.env, self.timeout_s, self.name = env, float(timeout_s), name
        self.tools = env.tools

    def reset(self, problem: "Problem", messages: list[dict]) -> list[dict]:
        out = self._call("reset", problem, messages)
        if not isinstance(out, (list, tuple)) or not all(isinstance(m, Mapping) for m in out):
            raise TypeError(f"environment {self.name!r}: reset() must return the episode's messages (a list of "
                            f"{{'role': ..., 'content': ...}} dicts), got {_describe(out)}")
        return out

    def step(self, messages: list[dict], scores: "list[ScoreResult]") -> Step:
        out = self._call("step", messages, scores)
        if not isinstance(out, Step):  # a SkyRL- or verifiers-style dict fails here, not steps later as an AttributeError
            raise TypeError(f"environment {self.name!r}: step() must return rlvr.envs.Step(observation, reward, correct), "
                            f"got {_describe(out)}")
        obs = out.observation
        if obs is not None and not (isinstance(obs, (list, tuple)) and all(_is_message(m) for m in obs)):
            # a bare string failed steps later as "can only concatenate list (not "str") to list"
            raise TypeError(f"environment {self.name!r}: step()'s observation must be None (the episode ends) or a list of "
                            f"{{'role': str, 'content': str}} dicts, got {_describe(obs)}")
        try:
            reward = float(out.reward)  # a bool, numpy scalar or 0-d tensor, as the episode reads it
        except (TypeError, ValueError):
            reward = math.nan
        if not math.isfinite(reward):  # a NaN reached the advantages and made its whole group's NaN
            raise ValueError(f"environment {self.name!r}: step()'s reward must be a finite number, got {_describe(out.reward)}")
        return out

    def _call(self, method: str, *args: Any) -> Any:
        token = _deadlines.add(self.timeout_s, f"environment {self.name!r}: {method}() has not returned within {self.timeout_s:g} s "
                                               "(trainer.role_timeout_s): stopping the run; the stacks follow")
        try:
            return getattr(self.env, method)(*args)
        finally:
            _deadlines.remove(token)


def _is_message(m: Any) -> bool:
    return isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {str(value)[:80]!r}"


class _Deadlines:
    """The calls running past their deadlines. One watchdog thread logs a call's message at its
    deadline (where the GIL is free), and faulthandler, which has one timer a process, dumps every
    stack and exits a second later, armed for the earliest deadline of the calls still running
    (several threads call: an async run's generator and its evaluation). One thread for all: a
    `threading.Timer` a call started a thread each time (0.15-0.7 ms, thousands of calls a step)."""

    def __init__(self):
        import threading

        self.cond, self.pending, self.count = threading.Condition(), {}, 0
        self.watch_until = float("inf")  # when the watchdog next looks, unless woken
        self.watchdog: threading.Thread | None = None

    def add(self, seconds: float, message: str) -> int:
        import threading
        import time

        due = time.monotonic() + seconds
        with self.cond:
            self.count += 1
            self.pending[self.count] = (due, message)
            self._arm()
            if self.watchdog is None:  # the first call (in this process: a fork starts afresh, below)
                self.watchdog = threading.Thread(target=self._watch, name="rlvr-env-deadlines", daemon=True)
                self.watchdog.start()
            elif due < self.watch_until:
                self.cond.notify()
            return self.count

    def remove(self, token: int) -> None:
        with self.cond:
            self.pending.pop(token, None)
            self._arm()

    def _watch(self) -> None:
        import logging
        import time

        warned: set[int] = set()
        with self.cond:
            while True:
                now = time.monotonic()
                for token, (due, message) in self.pending.items():
                    if due <= now and token not in warned:
                        warned.add(token)
                        logging.getLogger("rlvr").error(message)
                warned &= self.pending.keys()
                waiting = [due for token, (due, _) in self.pending.items() if token not in warned]
                self.watch_until = min(waiting, default=float("inf"))
                self.cond.wait(None if not waiting else max(self.watch_until - now, 0.001))

    def _arm(self) -> None:
        import faulthandler
        import sys
        import time

        if not self.pending:
            faulthandler.cancel_dump_traceback_later()
            return
        earliest = min(due for due, _ in self.pending.values()) + 1
        faulthandler.dump_traceback_later(max(earliest - time.monotonic(), 0.001), exit=True, file=sys.__stderr__)


_deadlines = _Deadlines()
# a forked child starts with none pending (the parent's calls are not its own) and a fresh condition:
# the parent's watchdog, waiting on the old one, is not in the child to be notified
os.register_at_fork(after_in_child=_deadlines.__init__)


def environment_from_config(env_cfg, timeout_s: float | None = None) -> Any:
    """The environment `env.*` configures: `env.name` with `env.options`, its tools plus `env.tools`
    and those of a verl tool-config file (`env.tool_config`); with ``timeout_s``, `WithDeadline`."""
    from omegaconf import OmegaConf

    from rlvr.envs.tools import tools_from_verl_config

    tools = list(env_cfg.tools) + (tools_from_verl_config(env_cfg.tool_config) if env_cfg.get("tool_config") else [])
    env = make_environment(env_cfg.name, OmegaConf.to_container(env_cfg.options, resolve=True), tools)
    return env if timeout_s is None else WithDeadline(env, timeout_s, env_cfg.name)


__all__ = ["Environment", "Step", "WithDeadline", "environment_from_config", "make_environment"]
