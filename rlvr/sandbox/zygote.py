"""The parent's handle on the zygote and its workers: start, spawn, kill, retire, drain, shut down.

The zygote (:mod:`rlvr.sandbox.child`) is a fresh interpreter started with ``subprocess`` (no
threads, nothing inherited from the caller, which may be a threaded Ray actor). It forks workers on
request; each worker's socket is created here and handed to the zygote over its own socket.
:class:`Zygote` holds no reference to the verifier, so the verifier's finalizer can close it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from multiprocessing import reduction
from multiprocessing.connection import Connection

from rlvr.sandbox.child import BOOT
from rlvr.sandbox.messages import VerifierStartError


class Worker:
    """A worker process as the parent sees it."""

    __slots__ = ("pid", "conn", "state", "idx", "t_start", "deadline", "overdue", "niced", "niced_at", "done", "born",
                 "cpu_mark", "cpu_check")

    def __init__(self, pid: int, conn: Connection, now: float):
        self.pid = pid
        self.conn = conn
        self.state = "starting"  # starting | idle | busy
        self.idx = -1
        self.t_start = 0.0
        self.deadline = 0.0
        self.overdue = False
        self.niced = False
        self.niced_at = 0.0
        self.cpu_mark = 0.0  # the worker's CPU seconds when it last replied
        self.cpu_check = 0.0  # when to look at its CPU use again
        self.done = 0
        self.born = now


def _socket_pipe() -> tuple[Connection, Connection]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Connection(a.detach()), Connection(b.detach())


class Zygote:
    """The zygote process, its socket, the live workers (by pid) and the spawns not yet answered (by token)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.workers: dict[int, Worker] = {}
        self.pending: dict[int, Connection] = {}
        self.spawn_t: dict[int, float] = {}  # token -> when its spawn was asked for
        self.closed = False
        self._token = 0

    def start(self, cfg: dict, start_timeout_s: float) -> None:
        """Start the zygote with ``cfg`` (terms, memory_mb, soft_timeout_s) and wait for its ``ready``."""
        parent_conn, child_conn = _socket_pipe()
        env = dict(os.environ)
        env["RLVR_VERIFIER_SYS_PATH"] = json.dumps([p for p in sys.path if isinstance(p, str)])
        env["RLVR_VERIFIER_FD"] = str(child_conn.fileno())
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(k, "1")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BOOT],
                pass_fds=(child_conn.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            child_conn.close()
        self.conn = parent_conn
        parent_conn.send(cfg)
        if not parent_conn.poll(start_timeout_s):
            self.stop()
            raise VerifierStartError(f"verifier zygote did not start within {start_timeout_s:.0f} s")
        try:
            msg = parent_conn.recv()
        except (EOFError, OSError):
            code = self.proc.wait(timeout=5)
            self.stop()
            raise VerifierStartError(f"verifier zygote exited with code {code} during start-up") from None
        if msg[0] != "ready":
            self.stop()
            raise VerifierStartError("verifier zygote failed to start:\n" + str(msg[1]))

    def alive(self) -> bool:
        return self.conn is not None and self.proc is not None and self.proc.poll() is None

    def restart(self, cfg: dict, start_timeout_s: float) -> None:
        """The zygote died: forget its workers and spawns, and start a new one."""
        for w in list(self.workers.values()):
            self.drop(w)
        for c in self.pending.values():
            c.close()
        self.pending.clear()
        self.spawn_t.clear()
        self.stop()
        self.start(cfg, start_timeout_s)

    def send(self, msg: tuple) -> None:
        """``kill``, ``renice`` or ``shutdown``; a dead zygote is noticed by the scoring loop, not here."""
        try:
            self.conn.send(msg)
        except (OSError, ValueError, AttributeError):
            pass

    def spawn(self) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._token += 1
            self.conn.send(("spawn", self._token))
            self.spawn_t[self._token] = time.monotonic()
            reduction.send_handle(self.conn, b.fileno(), self.proc.pid)
        except (OSError, ValueError, AttributeError):  # AttributeError: closed meanwhile
            a.close()
            self.spawn_t.pop(self._token, None)
            return
        finally:
            b.close()
        self.pending[self._token] = Connection(a.detach())

    def capacity(self) -> int:
        """Workers that can take an item now or soon: spawning, starting, idle, and busy but not set aside."""
        return len(self.pending) + sum(1 for w in self.workers.values() if not (w.state == "busy" and w.overdue))

    def drop(self, w: Worker, kill: bool = False) -> None:
        self.workers.pop(w.pid, None)
        if kill:
            self.send(("kill", w.pid))
        _close_quietly(w.conn)

    def retire(self, w: Worker) -> None:
        """Ask a worker to exit after its item (``None`` ends its loop)."""
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
        self.drop(w)

    def drain(self) -> list[tuple[int, int]]:
        """Read the zygote's messages: register spawned workers; return the ``(pid, exit code)`` of exits."""
        exits = []
        while self.conn is not None:
            try:
                if not self.conn.poll(0):
                    break
                msg = self.conn.recv()
            except (EOFError, OSError):
                # the zygote died; the scoring loop notices (alive() is False)
                _close_quietly(self.conn)
                self.conn = None
                break
            if msg[0] == "spawned":
                _, token, pid = msg
                conn = self.pending.pop(token, None)
                if conn is not None:
                    w = Worker(pid, conn, time.monotonic())
                    w.born = self.spawn_t.pop(token, w.born)
                    self.workers[pid] = w
            elif msg[0] == "exit":
                exits.append((msg[1], msg[2]))
        return exits

    def stop(self, grace_s: float = 0.0) -> None:
        """Close the socket and end the zygote: after ``grace_s`` to shut down by itself (it kills its
        workers), else killed (its workers follow through ``PR_SET_PDEATHSIG``)."""
        _close_quietly(self.conn)
        self.conn = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    pass
            self.proc = None

    def close(self) -> None:
        """Close every worker socket, ask the zygote to shut down, and wait 3 s for it. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for c in [w.conn for w in self.workers.values()] + list(self.pending.values()):
            _close_quietly(c)
        self.workers.clear()
        self.pending.clear()
        if self.conn is not None:
            self.send(("shutdown",))
        self.stop(grace_s=3.0)


def _close_quietly(conn: Connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except OSError:
            pass
