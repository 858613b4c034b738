"""Roles that outlive their actor: a dead actor is replaced and the call that found it dead is redone.

A node is preempted, a worker segfaults, the OOM killer picks a process: Ray then raises
``RayActorError`` at the next call. A stopped or hung process raises nothing and never answers: a
call unanswered within its deadline (``trainer.role_timeout_s``) counts as a death too.  A :class:`RestartingRole` holds one actor of a role and the
recipe to make another (the same placement bundle and runtime env).  :meth:`RestartingRole.call`
runs a method; if the actor is dead it starts a replacement, brings it to the dead one's state
(``restore``), and re-issues the call.  After ``max_restarts`` replacements the run stops with
:class:`RoleFailed`, which names the role, where it ran and the last error.

Which roles restart this way, and what "the same state" is:
- the verifier pool: stateless; the batch it was scoring is scored again, with the same result;
- the value server: its context comes back from the last :meth:`snapshot` (taken after every
  update), so predictions continue as if nothing happened.  The controller does not wait for it:
  a step whose prediction hit the dead server stands in (0.5, 0.5), which V0.5 rejects outright
  (`informed`: the prompt's own or population-shrunk estimate, rollouts may be bought, the window
  does not learn from it), while the replacement loads.

The rollout engines restart inside :class:`rlvr.rollout.pool.RolloutPool` (they also count a call
unanswered within ``rollout.timeout_s``, during generation or a weight sync, as a death), and the
learners in the trainer's loop, which goes back to the last checkpoint.

Every role follows one :class:`RestartPolicy`: at most ``trainer.max_restarts`` replacements per role
in a run, the dead actor killed (a stopped process too), and a replacement that no node has room
for (its node was lost) failing within ``cluster.placement_timeout_s`` with :class:`RoleFailed`,
never pending forever.  The policy also keeps the role's restarts and the seconds they cost, which
every step's record logs (`faults/*`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import ray

log = logging.getLogger(__name__)

__all__ = ["RestartPolicy", "RestartingRole", "RoleFailed", "gather", "node_name", "node_of"]


class RoleFailed(RuntimeError):
    """A role's actor died more often than ``trainer.max_restarts`` allows."""


def gather(calls: dict[Any, ray.ObjectRef], timeout_s: float | None, deadline: str) -> tuple[dict, dict[Any, BaseException]]:
    """Wait at most ``timeout_s`` for every call; return (answers, failures), each keyed as ``calls``.

    A call fails when its actor is lost (``RayActorError``) or has not answered by the deadline
    (``TimeoutError``: a stopped process never answers, so waiting longer would hang the run).
    ``deadline`` names the config key that set ``timeout_s``, for the message.
    """
    ready = set(ray.wait(list(calls.values()), num_returns=len(calls), timeout=timeout_s)[0])
    answers, failures = {}, {}
    for key, ref in calls.items():
        try:
            if ref not in ready:
                raise TimeoutError(f"no answer within {deadline}={timeout_s}")
            answers[key] = ray.get(ref)
        except (ray.exceptions.RayActorError, TimeoutError) as e:
            failures[key] = e
    return answers, failures


def node_of(actor) -> ray.ObjectRef:
    """Ask an actor where it runs, at start: once it is dead it cannot say."""
    return actor.__ray_call__.remote(lambda self: ray.util.get_node_ip_address())


def node_name(ref: ray.ObjectRef) -> str:
    """The answer to :func:`node_of`, if it came."""
    try:
        return ray.get(ref, timeout=0)
    except Exception:  # noqa: BLE001 - not known (yet)
        return "an unknown node"


class RestartPolicy:
    """How every role's dead actors are replaced: the role's budget of ``max_restarts`` replacements
    in the run, the kill of the dead actor, and the deadline ``ready_timeout_s`` for a replacement to
    start. It counts the role's restarts and the seconds they cost (the caller adds those)."""

    def __init__(self, role: str, max_restarts: int, ready_timeout_s: float | None):
        self.role, self.max_restarts, self.ready_timeout_s = role, int(max_restarts), ready_timeout_s
        self.restarts, self.seconds_lost, self.last_error = 0, 0.0, None
        self.spans_lost: list[tuple[float, float]] = []  # (start, end) `time.perf_counter()`s, disjoint
        self.lock = threading.Lock()  # the async driver's generator and the trainer share roles

    def charge(self, what: str, where: str | None, error: BaseException) -> None:
        """Count one replacement of ``what`` (which ran on ``where``, when known), or raise RoleFailed past the budget."""
        self.last_error = error
        what = f"{what} on {where}" if where else what
        if self.restarts >= self.max_restarts:
            deaths = self.restarts + 1
            raise RoleFailed(
                f"the {self.role} role's actors died {deaths} time{'s' * (deaths != 1)} in this run, more than "
                f"trainer.max_restarts={self.max_restarts} allows; the last was {what} ({type(error).__name__}): {first_line(error)}"
            ) from error
        self.restarts += 1
        log.warning("%s died (%s); starting a replacement (%d of at most %d for the %s role)",
                    what, type(error).__name__, self.restarts, self.max_restarts, self.role)

    def lost(self, since: float) -> None:
        """Count the seconds since ``since`` (a `time.perf_counter()`) as lost to this role's faults,
        less what an earlier call already counted: an async run's weight sync and its generating
        thread both wait out one engine's replacement, and each counted it (17 s lost in 9)."""
        with self.lock:
            spans = sorted([*self.spans_lost, (since, time.perf_counter())])
            self.spans_lost = spans[:1]
            for start, end in spans[1:]:  # merged where they overlap
                last_start, last_end = self.spans_lost[-1]
                if start <= last_end:
                    self.spans_lost[-1] = (last_start, max(last_end, end))
                else:
                    self.spans_lost.append((start, end))
            self.seconds_lost = sum(end - start for start, end in self.spans_lost)

    def replace(self, dead: list, start: Callable[[], Any]) -> Any:
        """Kill the dead actors (Ray's kill is a SIGKILL: a stopped process goes too) and start the replacement."""
        for actor in dead:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - it is gone already
                pass
        return start()

    def await_ready(self, actors: list, what: str) -> None:
        """Wait for replacements to start, at most ``ready_timeout_s``: one that cannot be placed (its
        node is gone and no other has room for its bundle) would otherwise leave every call pending."""
        try:
            ray.get([a.__ray_ready__.remote() for a in actors], timeout=self.ready_timeout_s)
        except ray.exceptions.GetTimeoutError as e:
            last = f"; last error: {first_line(self.last_error)}" if self.last_error is not None else ""
            raise RoleFailed(
                f"no replacement for {what} started within cluster.placement_timeout_s={self.ready_timeout_s}: "
                f"no node has room for its bundle (was its node lost?){last}"
            ) from e


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def last_line(error: BaseException) -> str:
    """The last non-empty line: where a Ray task error's remote traceback ends in its cause."""
    return ([line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__])[-1]


class RestartingRole:
    """One actor of a role that is replaced when it dies (see the module docstring).

    ``start()`` returns a new actor handle (the same placement bundle and options every time).
    A role with state names the actor's methods that read it (``snapshot_method``) and set it
    (``restore_method``): a replacement is restored to the state :meth:`snapshot` or :meth:`load`
    last saw.
    """

    def __init__(
        self,
        name: str,
        start: Callable[[], Any],
        max_restarts: int,
        snapshot_method: str | None = None,
        restore_method: str | None = None,
        ready_timeout_s: float | None = None,
        actor: Any = None,
        call_timeout_s: float | None = None,
    ):
        """``actor``: one already running (kept from a previous run) instead of ``start()``'s.
        ``call_timeout_s``: a call unanswered this long counts as a death (a stopped or hung process
        never answers), so the actor is replaced and the call redone; None waits."""
        self.name, self._start, self.call_timeout_s = name, start, call_timeout_s
        self.policy = RestartPolicy(name, max_restarts, ready_timeout_s)
        self._unready = False  # a replacement not yet known to have started
        self.snapshot_method, self.restore_method = snapshot_method, restore_method
        self.state = None
        self.updates: list[tuple[str, tuple]] = []  # `update` calls since the state was last read or set
        self._replaying: list = []  # a replacement's restore and replayed updates, until known to have worked
        self.actor = actor if actor is not None else start()
        self._node = node_of(self.actor)

    def call(self, method: str, *args):
        """``actor.method(*args)``'s result, on a replacement actor if this one has died or gone silent."""
        failed_at = None
        while True:
            actor = self.actor
            try:
                self._await_replacement()
                out = self._answer(actor, method, args)
            except (ray.exceptions.RayActorError, TimeoutError) as e:
                failed_at = failed_at or time.perf_counter()
                self.restart(e, actor)
                continue
            if failed_at is not None:
                self.policy.lost(failed_at)
            return out

    def call_or(self, default, method: str, *args):
        """Like :meth:`call`, but a dead (or silent) actor gives ``default``; the replacement starts and
        restores meanwhile (calls queue behind its restore), so the caller does not wait for it."""
        actor = self.actor
        try:
            return self._answer(actor, method, args)
        except (ray.exceptions.RayActorError, TimeoutError) as e:
            self.restart(e, actor)
            return default

    def _answer(self, actor, method: str, args: tuple):
        try:
            out = ray.get(getattr(actor, method).remote(*args), timeout=self.call_timeout_s)
        except ray.exceptions.GetTimeoutError as e:
            raise TimeoutError(f"no answer to {method} within trainer.role_timeout_s={self.call_timeout_s}") from e
        if self._replaying and actor is self.actor:  # done by now: the actor ran them before this call
            self._check_replay()
        return out

    def _check_replay(self) -> None:
        """A replacement whose restore (or a replayed update) raised would answer from the wrong state,
        with only Ray's "unhandled error" line to say so: the role fails instead."""
        try:
            ray.get(self._replaying, timeout=self.call_timeout_s)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None) or e  # the actor's own exception, not Ray's "ray::..." header
            raise RoleFailed(f"the {self.name} actor's replacement could not be brought back to its last state: "
                             f"{type(cause).__name__}: {first_line(cause)}") from e
        except ray.exceptions.GetTimeoutError as e:
            raise TimeoutError(f"the {self.name} actor's replacement did not restore within trainer.role_timeout_s={self.call_timeout_s}") from e
        self._replaying = []

    def _await_replacement(self) -> None:
        if self._unready:
            self.policy.await_ready([self.actor], f"the {self.name} actor")
            self._unready = False

    def update(self, method: str, *args):
        """A :meth:`call` that changes the actor's state: kept until the next :meth:`snapshot` or
        :meth:`load` and replayed on a replacement after its restore (a death between an update and
        the snapshot after it lost the update, unsaid: the value server's step of context)."""
        out = self.call(method, *args)
        self.updates.append((method, args))
        return out

    def snapshot(self) -> Any:
        """Read and keep the actor's state: what a replacement is restored to."""
        self.state = self.call(self.snapshot_method)
        self.updates = []
        return self.state

    def load(self, state: Any) -> None:
        """Set the actor's state (from a checkpoint); a replacement is restored to it too."""
        self.call(self.restore_method, state)
        self.state, self.updates = state, []

    def node(self) -> str:
        return node_name(self._node)

    def restart(self, error: BaseException, dead) -> None:
        """Replace the dead actor (restored to the last snapshot), or raise RoleFailed past the limit."""
        with self.policy.lock:
            if self.actor is not dead:
                return  # another thread has replaced it already
            self.policy.charge(f"the {self.name} actor", self.node(), error)
            self.actor = self.policy.replace([dead], self._start)
            self._node = node_of(self.actor)
            self._unready = True  # its first call waits for it to start (`call_or` does not wait at all)
            self._replaying = []
            if self.restore_method and self.state is not None:
                self._replaying.append(getattr(self.actor, self.restore_method).remote(self.state))
            for method, args in self.updates:  # queued behind the restore: an actor runs a caller's calls in order
                self._replaying.append(getattr(self.actor, method).remote(*args))

    def kill(self) -> None:
        ray.kill(self.actor)
