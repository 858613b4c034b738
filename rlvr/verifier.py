"""Verifier pool: reward functions in isolated worker processes.

Model completions are untrusted input and reward code can hang, blow up its
memory or crash.  :class:`ProcessVerifier` scores a batch so that none of that
reaches the training loop:

* Every item runs in a long-lived **worker process** under a hard wall-clock
  deadline (``timeout_s``).  Each worker also arms a CPU-time timer
  (``ITIMER_PROF``) at 80% of the deadline: Python-level loops end gracefully
  with ``error="timeout"`` and the worker is recycled.  Code that no signal can
  interrupt (a long C loop such as a huge integer power) hits the parent's
  hard deadline and the worker is SIGKILLed.
* Each worker gets an **address-space limit** (``RLIMIT_AS``): its start-up
  footprint plus ``memory_mb``.  A ``MemoryError`` is reported as
  ``error="oom"`` and the worker exits and is replaced.
* A worker that dies without a reply (segfault, abort, kernel OOM kill) is
  replaced; its item gets ``error="crash"`` (``"oom"`` if it was SIGKILLed by
  someone else, i.e. the kernel's OOM killer).
* Every other item in the batch is still scored; results align with requests.

Workers are forked from a **zygote**: a helper process started once per pool
with ``subprocess`` (a fresh interpreter, no threads, nothing inherited from
the caller, which may be a threaded Ray actor).  The zygote imports the reward
functions and warms math-verify up, then forks a worker on request, so a
replacement costs a fork (milliseconds) instead of a fresh interpreter plus a
one-second math-verify import.  The zygote is the workers' parent: it reaps
them, reports their exit status, and kills them on request.  Workers get
``PR_SET_PDEATHSIG`` (die with the zygote) and the zygote exits, killing its
workers, as soon as the pool's end of its socket closes, which also happens
when the pool's process dies: no orphans.

An item that runs much longer than recent items (3 x their 90th percentile,
at most ``overdue_s``) is set aside: its worker no longer counts against
``num_workers`` and a spare takes the next item, so hung items do not stall
the healthy ones (at most ``max_overdue`` set-aside workers).  While items are
queued, a set-aside worker that has really been computing (CPU time from
/proc) is re-niced to 19 and its deadline clock is paused (it is not charged
for time we deliberately gave to other items); priorities and clocks are
restored when the queue drains, so a batch still ends at most ``timeout_s``
after its last item was dispatched (and no item runs longer than
``10 * timeout_s`` in any case).

``VerifierPool`` is a thin Ray actor around a ``ProcessVerifier``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = [
    "ERROR_KINDS",
    "ProcessVerifier",
    "RewardSpec",
    "ScoreRequest",
    "ScoreResult",
    "VerifierPool",
    "VerifierStartError",
]

log = logging.getLogger(__name__)

ERROR_KINDS = ("timeout", "oom", "crash")
_EXIT_OOM = 87


@dataclass
class ScoreRequest:
    completion: str
    answer: str
    answer_type: str = "number"
    prompt: str = ""  # the question, for reward functions that read it (trl style)
    meta: dict | None = None  # the data row's other fields (verl: data_source, extra_info)

    @classmethod
    def for_problem(cls, completion: str, problem) -> "ScoreRequest":
        """A completion of a ``rlvr.data.Problem``."""
        return cls(completion, problem.answer, problem.answer_type, problem.question, dict(problem.meta or {}) or None)


@dataclass
class ScoreResult:
    reward: float  # combined weighted reward
    correct: bool  # every term that decides correctness (`correctness_terms`) scored >= 1.0
    error: str | None = None  # None, "timeout", "oom", "crash" or "error:<ExcType>"


@dataclass
class RewardSpec:
    fn: str = "math"  # builtin name or "module:function"
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    style: str = "rlvr"  # the function's signature: rlvr | trl | verl (rlvr.rewards.call_reward)
    # Does this term say whether the answer is right? None: math and exact do, format does not,
    # and a module:function does when it is the only candidate (see `correctness_terms`).
    correctness: bool | None = None


class VerifierStartError(RuntimeError):
    """The zygote or its workers could not start (bad reward spec, import
    error in a user module, memory limit too small, ...)."""


# ---------------------------------------------------------------------------
# Helpers shared by both sides
# ---------------------------------------------------------------------------


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
    from rlvr.rewards import REWARD_FUNCTIONS

    if spec.fn not in REWARD_FUNCTIONS:
        mod, _, attr = spec.fn.partition(":")
        if not mod or not attr:
            raise ValueError(f"reward fn {spec.fn!r}: expected one of {sorted(REWARD_FUNCTIONS)} or 'module:function'")
    weight = float(spec.weight)
    if not math.isfinite(weight):
        raise ValueError(f"reward weight must be finite, got {spec.weight!r}")
    kwargs = dict(spec.kwargs or {})
    from rlvr.rewards import REWARD_STYLES

    if spec.style not in REWARD_STYLES:
        raise ValueError(f"reward term {spec.fn!r}: unknown style {spec.style!r}; known: {', '.join(REWARD_STYLES)}")
    if spec.correctness not in (None, True, False):
        raise ValueError(f"reward term {spec.fn!r}: correctness must be true, false or null, got {spec.correctness!r}")
    return RewardSpec(fn=spec.fn, weight=weight, kwargs=kwargs, style=spec.style, correctness=spec.correctness)


def correctness_terms(terms: list[RewardSpec]) -> list[int]:
    """The indices of the terms that decide "correct": an answer is correct when each scores >= 1.

    A term's ``correctness`` says it; unset, the builtins say it (math and exact decide, format
    shapes), and a user's module:function decides when it is the only one that could (several
    unmarked ones with no deciding builtin are an error). The order of the terms never matters.
    No deciding term at all is an error naming the setting.
    """
    from rlvr.rewards import DECIDES_CORRECTNESS

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


def _coerce_text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return ""
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", errors="replace")
    return str(x)


def _coerce_request(r: Any) -> ScoreRequest:
    if isinstance(r, ScoreRequest):
        return ScoreRequest(_coerce_text(r.completion), _coerce_text(r.answer), str(r.answer_type or "number"), _coerce_text(r.prompt), r.meta)
    if isinstance(r, dict):
        c, a, t = r.get("completion"), r.get("answer"), r.get("answer_type", "number")
    elif isinstance(r, (tuple, list)):
        c, a, t = (list(r) + [None, None, "number"])[:3]
    else:
        raise TypeError(f"cannot score a {type(r).__name__}; pass ScoreRequest objects")
    return ScoreRequest(_coerce_text(c), _coerce_text(a), str(t or "number"))


# ---------------------------------------------------------------------------
# Worker and zygote (run in the child processes)
# ---------------------------------------------------------------------------


class _SoftTimeout(BaseException):
    """Raised in a worker by its own CPU-time timer (not an Exception, so
    library code that swallows ``Exception`` cannot swallow it)."""


_armed = False


def _on_alarm(signum, frame):  # pragma: no cover - runs in workers
    global _armed
    if _armed:
        _armed = False
        raise _SoftTimeout()


def _set_pdeathsig() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # pragma: no cover - non-Linux
        pass


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by ``pid``, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except Exception:  # pragma: no cover
        return 0


def _worker_main(fd: int, zygote_pid: int, cfg: dict, terms: list) -> None:  # pragma: no cover - child
    global _armed
    conn = Connection(fd)
    _set_pdeathsig()
    if os.getppid() != zygote_pid:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGPROF, _on_alarm)
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if cfg["memory_mb"]:
        limit = _vm_size_bytes() + int(cfg["memory_mb"]) * 2**20
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass
    soft_s = cfg["soft_timeout_s"]
    from rlvr.rewards import BadRewardValue, call_reward

    conn.send(("ready", os.getpid(), _cpu_s()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if msg is None:
            os._exit(0)
        idx, completion, answer, answer_type, prompt, meta = msg
        retire = False
        exit_after = False
        try:
            try:
                _armed = True
                signal.setitimer(signal.ITIMER_PROF, soft_s)
                values = []
                for fn, kwargs, style in terms:
                    values.append(call_reward(fn, style, completion, answer, answer_type, prompt, meta, kwargs))
                _armed = False
                reply = ("ok", idx, values)
            except _SoftTimeout:
                reply = ("err", idx, "timeout")
                retire = True
            except MemoryError:
                _armed = False
                values = None
                reply = ("err", idx, "oom")
                exit_after = True
            except RecursionError:
                _armed = False
                reply = ("err", idx, "error:RecursionError")
                retire = True
            except BadRewardValue as e:
                _armed = False
                reply = ("err", idx, f"error:BadRewardValue: {e}")
            except BaseException as e:  # noqa: BLE001 - untrusted code, report everything
                _armed = False
                reply = ("err", idx, "error:" + type(e).__name__)
        except _SoftTimeout:
            reply = ("err", idx, "timeout")
            retire = True
        _armed = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        try:
            conn.send(reply + (retire or exit_after, _cpu_s()))
        except BaseException:
            os._exit(_EXIT_OOM if exit_after else 1)
        if exit_after:
            os._exit(_EXIT_OOM)


def _zygote_main(fd: int) -> None:  # pragma: no cover - child
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cfg = conn.recv()
        from rlvr import rewards

        rewards.configure(None)
        terms = [(rewards.load_reward_fn(fn), dict(kwargs), style) for fn, kwargs, style in cfg["terms"]]
        if any(fn == "math" for fn, _, _ in cfg["terms"]):
            rewards.warmup()
        import gc

        gc.collect()
        gc.freeze()  # keep the warmed-up heap shared copy-on-write with the workers
    except BaseException:
        try:
            conn.send(("start_error", traceback.format_exc()))
        finally:
            os._exit(1)

    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    signal.set_wakeup_fd(wfd)
    children: set[int] = set()
    me = os.getpid()
    conn.send(("ready", me))

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            try:
                conn.send(("exit", pid, os.waitstatus_to_exitcode(status)))
            except OSError:
                pass

    def shutdown() -> None:
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in list(children):
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
        os._exit(0)

    while True:
        try:
            ready = wait([conn, rfd])
        except OSError:
            shutdown()
        if rfd in ready:
            try:
                while os.read(rfd, 512):
                    pass
            except OSError:
                pass
        reap()
        if conn not in ready:
            continue
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            shutdown()
        op = msg[0]
        if op == "spawn":
            try:
                wfd_child = reduction.recv_handle(conn)
            except (EOFError, OSError):
                shutdown()
            pid = os.fork()
            if pid == 0:
                try:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.close(rfd)
                    os.close(wfd)
                    conn.close()
                    _worker_main(wfd_child, me, cfg, terms)
                finally:
                    os._exit(1)
            os.close(wfd_child)
            children.add(pid)
            conn.send(("spawned", msg[1], pid))
        elif op == "kill":
            if msg[1] in children:
                try:
                    os.kill(msg[1], signal.SIGKILL)
                except OSError:
                    pass
        elif op == "renice":
            if msg[1] in children:
                try:
                    os.setpriority(os.PRIO_PROCESS, msg[1], msg[2])
                except OSError:
                    pass
        elif op == "shutdown":
            shutdown()


_BOOT = (
    "import json, os, sys\n"
    "sys.path[:] = json.loads(os.environ.pop('RLVR_VERIFIER_SYS_PATH'))\n"
    "fd = int(os.environ.pop('RLVR_VERIFIER_FD'))\n"
    "from rlvr.verifier import _zygote_main\n"
    "_zygote_main(fd)\n"
)


# ---------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------


class _Worker:
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


class _State:
    """Everything the finalizer needs; no reference back to the verifier."""

    def __init__(self):
        self.zygote: subprocess.Popen | None = None
        self.zconn: Connection | None = None
        self.workers: dict[int, _Worker] = {}
        self.pending: dict[int, Connection] = {}
        self.closed = False


def _shutdown(state: _State) -> None:
    if state.closed:
        return
    state.closed = True
    for w in list(state.workers.values()):
        try:
            w.conn.close()
        except OSError:
            pass
    for c in list(state.pending.values()):
        try:
            c.close()
        except OSError:
            pass
    state.workers.clear()
    state.pending.clear()
    if state.zconn is not None:
        try:
            state.zconn.send(("shutdown",))
        except (OSError, ValueError):
            pass
        try:
            state.zconn.close()
        except OSError:
            pass
        state.zconn = None
    z = state.zygote
    if z is not None:
        try:
            z.wait(timeout=3)
        except subprocess.TimeoutExpired:
            z.kill()  # its workers follow through PR_SET_PDEATHSIG
            try:
                z.wait(timeout=3)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        state.zygote = None


class ProcessVerifier:
    """Score completions with weighted reward terms in isolated worker processes.

    Args:
        terms: reward terms (``RewardSpec``, or dicts with ``fn``, ``weight``,
            ``kwargs``, or bare function names).  The combined reward is
            ``sum(weight * fn(...))``; ``correct``: every term that decides
            correctness (:func:`correctness_terms`) returned >= 1.0.
        num_workers: items scored concurrently.
        timeout_s: hard wall-clock deadline per item (all terms together).
        memory_mb: address space a worker may allocate beyond its start-up
            footprint (``RLIMIT_AS``); 0 disables the limit.
        num_spares: idle pre-forked workers kept ready to replace a killed
            one or to take over from an overdue one.
        overdue_s: upper bound of the time after which an item's worker is
            re-niced to 19 and a spare takes over its slot (default
            ``min(1, timeout_s / 4)``).  The threshold adapts: once 20 items
            have been scored it is ``overdue_factor`` (3) times the 90th
            percentile of recent item durations, at least ``min_overdue_s``
            (0.02 s).  The worker gets its priority back when the queue is
            empty.
        overdue_nice: niceness of a set-aside worker while items are queued
            (19; 0 disables re-nicing, the slot is still handed over).
        max_items_per_worker: recycle a worker after this many items.
        max_overdue: at most this many overdue workers are set aside at once
            (default ``16 * num_workers``); beyond it they count against
            ``num_workers`` again.  Each one may hold up to ``memory_mb``
            (a hung math-verify worker measured ~20 MB private memory: the
            rest is shared copy-on-write with the zygote).
        start_timeout_s: how long to wait for the zygote to start.
    """

    def __init__(
        self,
        terms: list[RewardSpec] | list[dict],
        num_workers: int = 2,
        timeout_s: float = 5.0,
        memory_mb: int = 1024,
        *,
        num_spares: int = 1,
        overdue_s: float | None = None,
        max_items_per_worker: int = 5000,
        start_timeout_s: float = 120.0,
        max_overdue: int | None = None,
        overdue_factor: float = 3.0,
        min_overdue_s: float = 0.02,
        overdue_nice: int = 19,
    ):
        if isinstance(terms, (RewardSpec, dict, str)):
            terms = [terms]
        self.terms = [coerce_spec(t) for t in terms]
        if not self.terms:
            raise ValueError("at least one reward term is required")
        self.deciding = correctness_terms(self.terms)
        if num_workers < 1:
            raise ValueError("num_workers must be >= 1")
        if not (timeout_s > 0):
            raise ValueError("timeout_s must be > 0")
        self.num_workers = int(num_workers)
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.num_spares = max(0, int(num_spares))
        self.overdue_s = float(overdue_s) if overdue_s is not None else min(1.0, self.timeout_s / 4)
        self.max_items_per_worker = max(1, int(max_items_per_worker))
        self.start_timeout_s = float(start_timeout_s)
        self.overdue_nice = max(0, min(19, int(overdue_nice)))
        self.overdue_factor = float(overdue_factor)
        self.min_overdue_s = float(min_overdue_s)
        # absolute cap on an item's wall time, even with its clock paused
        self.niced_cap_s = 10.0 * self.timeout_s
        self.max_overdue = int(max_overdue) if max_overdue is not None else 16 * self.num_workers
        self._state = _State()
        self._finalizer = weakref.finalize(self, _shutdown, self._state)
        self._token = 0
        self._start_failures = 0
        self._dead: dict[int, tuple[int, float]] = {}  # pid -> (item idx, classify-by time)
        self._exit_codes: dict[int, int] = {}  # pid -> exit code reported before its EOF
        self._lock = threading.Lock()
        self.replaced_total = 0
        # seconds from a spawn request to the worker's "ready" (recent ones)
        self.spawn_latencies: collections.deque[float] = collections.deque(maxlen=1000)
        self._spawn_t: dict[int, float] = {}
        # seconds from the start of the last score() call to each item's result
        self.last_finish_times: list[float] = []
        # worker CPU seconds per item of the last call (None: the worker died)
        self.last_cpu_times: list[float | None] = []
        # item index -> CPU seconds it had used when its worker was re-niced
        self.last_renice_cpu: dict[int, float] = {}
        # durations of recent successful items, for the adaptive overdue threshold
        self._durations: collections.deque[float] = collections.deque(maxlen=256)
        self._overdue_cache = (-1, self.overdue_s)
        self._cpu_durations: collections.deque[float] = collections.deque(maxlen=256)
        self._cpu_cache = (-1, self.overdue_s)
        self._n_ok = 0
        self._start_zygote()
        self._top_up(time.monotonic())
        self._pump_until_ready(self.start_timeout_s)

    def _pump_until_ready(self, timeout: float) -> None:
        """Outside ``score``: handle spawn/ready/exit messages until every
        wanted worker is up (or ``timeout``)."""
        st = self._state
        t_end = time.monotonic() + timeout
        want = self.num_workers + self.num_spares
        noop = lambda *a: None  # noqa: E731
        while st.zconn is not None:
            # an idle worker only becomes readable when it dies (EOF)
            for w in list(st.workers.values()):
                if w.state == "idle":
                    try:
                        dead = w.conn.poll(0)
                    except (OSError, ValueError):
                        dead = True
                    if dead:
                        self._drop(w, kill=True)
            self._top_up(time.monotonic())
            idle = sum(1 for w in st.workers.values() if w.state == "idle")
            if idle >= want and not st.pending:
                return
            left = t_end - time.monotonic()
            if left <= 0:
                return
            objs = [st.zconn] + [w.conn for w in st.workers.values() if w.state != "busy"]
            for obj in wait(objs, left):
                if obj is st.zconn:
                    self._drain_zygote(noop, noop)
                    continue
                w = next((w for w in st.workers.values() if w.conn is obj), None)
                if w is None:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    self._drop(w)
                    if w.state == "starting":
                        self._start_failures += 1
                        self._check_start_failures()
                    continue
                if msg[0] == "ready":
                    w.state = "idle"
                    w.cpu_mark = msg[2]
                    self._start_failures = 0
                    self.spawn_latencies.append(time.monotonic() - w.born)

    # -- process management -------------------------------------------------

    def _start_zygote(self) -> None:
        st = self._state
        parent_conn, child_conn = _socket_pipe()
        env = dict(os.environ)
        env["RLVR_VERIFIER_SYS_PATH"] = json.dumps([p for p in sys.path if isinstance(p, str)])
        env["RLVR_VERIFIER_FD"] = str(child_conn.fileno())
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env.setdefault(k, "1")
        try:
            st.zygote = subprocess.Popen(
                [sys.executable, "-c", _BOOT],
                pass_fds=(child_conn.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            child_conn.close()
        st.zconn = parent_conn
        cfg = {
            "terms": [(t.fn, t.kwargs, t.style) for t in self.terms],
            "memory_mb": self.memory_mb,
            "soft_timeout_s": max(0.01, 0.8 * self.timeout_s),
        }
        parent_conn.send(cfg)
        if not parent_conn.poll(self.start_timeout_s):
            _shutdown_zygote_only(st)
            raise VerifierStartError(f"verifier zygote did not start within {self.start_timeout_s:.0f} s")
        try:
            msg = parent_conn.recv()
        except (EOFError, OSError):
            code = st.zygote.wait(timeout=5)
            _shutdown_zygote_only(st)
            raise VerifierStartError(f"verifier zygote exited with code {code} during start-up") from None
        if msg[0] != "ready":
            _shutdown_zygote_only(st)
            raise VerifierStartError("verifier zygote failed to start:\n" + str(msg[1]))

    def _zygote_alive(self) -> bool:
        st = self._state
        return st.zconn is not None and st.zygote is not None and st.zygote.poll() is None

    def _restart_zygote(self) -> None:
        st = self._state
        log.warning("verifier zygote died; restarting it")
        for w in list(st.workers.values()):
            self._drop(w)
        for c in st.pending.values():
            c.close()
        st.pending.clear()
        self._spawn_t.clear()
        _shutdown_zygote_only(st)
        self._start_zygote()

    def _zsend(self, msg: tuple) -> None:
        try:
            self._state.zconn.send(msg)
        except (OSError, ValueError, AttributeError):
            pass

    def _spawn(self) -> None:
        st = self._state
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._token += 1
            st.zconn.send(("spawn", self._token))
            self._spawn_t[self._token] = time.monotonic()
            reduction.send_handle(st.zconn, b.fileno(), st.zygote.pid)
        except (OSError, ValueError):
            a.close()
            self._spawn_t.pop(self._token, None)
            return
        finally:
            b.close()
        st.pending[self._token] = Connection(a.detach())

    def _live_capacity(self) -> int:
        st = self._state
        n = len(st.pending)
        for w in st.workers.values():
            if not (w.state == "busy" and w.overdue):
                n += 1
        return n

    def _top_up(self, now: float) -> None:
        target = self.num_workers + self.num_spares
        missing = target - self._live_capacity()
        for _ in range(max(0, missing)):
            self._spawn()

    def _drop(self, w: _Worker, kill: bool = False) -> None:
        st = self._state
        st.workers.pop(w.pid, None)
        if kill:
            self._zsend(("kill", w.pid))
        try:
            w.conn.close()
        except OSError:
            pass

    def _retire(self, w: _Worker) -> None:
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
        self._drop(w)

    # -- scoring --------------------------------------------------------------

    def score(self, requests: list[ScoreRequest]) -> tuple[list[ScoreResult], dict]:
        """Score a batch.  Returns one ``ScoreResult`` per request, in order,
        and stats: ``items``, ``seconds``, ``items_per_s``, counts ``timeout``,
        ``oom``, ``crash``, ``error`` (all ``error:*``), ``errors_by_type``,
        ``replaced`` (workers replaced), ``reward_mean``, ``correct_rate`` and
        ``term_mean/<i>:<fn>``."""
        with self._lock:
            return self._score(requests)

    def _score(self, requests) -> tuple[list[ScoreResult], dict]:
        if self._state.closed:
            raise RuntimeError("ProcessVerifier is closed")
        reqs = [_coerce_request(r) for r in requests]
        n = len(reqs)
        t0 = time.monotonic()
        results: list[ScoreResult | None] = [None] * n
        finish_times = [0.0] * n
        cpu_times: list[float | None] = [None] * n
        renice_cpu: dict[int, float] = {}
        term_sums = [0.0] * len(self.terms)
        term_counts = [0] * len(self.terms)
        queue = collections.deque(range(n))
        left = n
        replaced0 = self.replaced_total
        st = self._state
        # Workers still busy from an interrupted call (KeyboardInterrupt in a
        # previous score()) would answer with stale item indices: drop them.
        for w in list(st.workers.values()):
            if w.state == "busy":
                self._drop(w, kill=True)
        self._dead.clear()

        def finish(idx: int, res: ScoreResult) -> None:
            nonlocal left
            if results[idx] is None:
                results[idx] = res
                finish_times[idx] = time.monotonic() - t0
                left -= 1

        def replaced() -> None:
            self.replaced_total += 1

        while left > 0:
            now = time.monotonic()
            if not self._zygote_alive():
                # in-flight items of the dead zygote's workers crash
                for w in list(st.workers.values()):
                    if w.state == "busy":
                        finish(w.idx, ScoreResult(0.0, False, "crash"))
                for pid, (idx, _) in list(self._dead.items()):
                    finish(idx, ScoreResult(0.0, False, "crash"))
                self._dead.clear()
                self._restart_zygote()
                if left == 0:
                    break
            self._top_up(now)

            # dispatch
            busy = [w for w in st.workers.values() if w.state == "busy"]
            n_overdue = sum(1 for w in busy if w.overdue)
            slots = self.num_workers - (len(busy) - n_overdue) - max(0, n_overdue - self.max_overdue)
            if queue and slots > 0:
                for w in list(st.workers.values()):
                    if slots <= 0 or not queue:
                        break
                    if w.state != "idle":
                        continue
                    try:
                        dead = w.conn.poll(0)  # an idle worker only speaks when it dies (EOF)
                    except (OSError, ValueError):
                        dead = True
                    if dead:
                        self._drop(w, kill=True)
                        continue
                    idx = queue.popleft()
                    r = reqs[idx]
                    try:
                        w.conn.send((idx, r.completion, r.answer, r.answer_type, r.prompt, r.meta))
                    except (OSError, ValueError):
                        queue.appendleft(idx)
                        self._drop(w, kill=True)
                        continue
                    w.state = "busy"
                    w.idx = idx
                    w.t_start = time.monotonic()
                    w.deadline = w.t_start + self.timeout_s
                    w.overdue = False
                    slots -= 1

            # wait for something to happen
            events = [w.deadline for w in st.workers.values() if w.state == "busy" and not w.niced]
            events += [w.t_start + self.niced_cap_s for w in st.workers.values() if w.state == "busy" and w.niced]
            overdue_after = self._overdue_after()
            events += [w.t_start + overdue_after for w in st.workers.values() if w.state == "busy" and not w.overdue]
            if queue and self.overdue_nice > 0:
                events += [w.cpu_check for w in st.workers.values() if w.state == "busy" and w.overdue and not w.niced]
            events += [t for _, t in self._dead.values()]
            events += [w.born + self.start_timeout_s for w in st.workers.values() if w.state == "starting"]
            now = time.monotonic()
            timeout = max(0.0, min(events) - now) if events else 1.0
            objs: list = [st.zconn] + [w.conn for w in st.workers.values()]
            try:
                ready = wait(objs, timeout)
            except OSError:
                ready = []
            now = time.monotonic()
            by_conn = {id(w.conn): w for w in st.workers.values()}
            for obj in ready:
                if obj is st.zconn:
                    self._drain_zygote(finish, replaced)
                    continue
                w = by_conn.get(id(obj))
                if w is None or w.pid not in st.workers:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    self._drop(w)
                    if w.state == "busy":
                        code = self._exit_codes.pop(w.pid, None)
                        if code is None:
                            # classify when the zygote reports the exit status
                            self._dead[w.pid] = (w.idx, now + 1.0)
                        else:
                            finish(w.idx, ScoreResult(0.0, False, _death_kind(code)))
                            replaced()
                    elif w.state == "starting":
                        self._start_failures += 1
                        self._check_start_failures()
                    continue
                kind = msg[0]
                if kind == "ready":
                    w.state = "idle"
                    w.cpu_mark = msg[2]
                    self._start_failures = 0
                    self.spawn_latencies.append(now - w.born)
                elif kind in ("ok", "err") and w.state == "busy" and msg[1] == w.idx:
                    retire = msg[3]
                    item_cpu = max(0.0, msg[4] - w.cpu_mark)
                    cpu_times[w.idx] = item_cpu
                    if kind == "ok":
                        self._cpu_durations.append(item_cpu)
                    w.cpu_mark = msg[4]
                    if kind == "ok":
                        self._durations.append(now - w.t_start)
                        self._n_ok += 1
                        values = msg[2]
                        reward = 0.0
                        for i, (t, v) in enumerate(zip(self.terms, values)):
                            reward += t.weight * v
                            term_sums[i] += v
                            term_counts[i] += 1
                        finish(w.idx, ScoreResult(float(reward), all(values[i] >= 1.0 for i in self.deciding), None))
                    else:
                        finish(w.idx, ScoreResult(0.0, False, msg[2]))
                    w.state = "idle"
                    w.idx = -1
                    w.done += 1
                    if w.niced:
                        self._zsend(("renice", w.pid, 0))
                    w.overdue = w.niced = False
                    if retire:
                        replaced()
                        self._retire(w)
                    elif w.done >= self.max_items_per_worker:
                        self._retire(w)
                    elif self._live_capacity() > self.num_workers + self.num_spares:
                        # a set-aside worker came back after its slot was
                        # refilled: the pool is one too big
                        self._retire(w)

            # the queue is empty: nothing healthy waits for the CPU any more, so
            # overdue items get their priority back (a slow but legitimate
            # item is not starved into a timeout)
            if not queue:
                now = time.monotonic()
                for w in st.workers.values():
                    if w.niced:
                        w.niced = False
                        w.deadline += now - w.niced_at  # its clock was paused
                        self._zsend(("renice", w.pid, 0))

            # deadlines
            now = time.monotonic()
            for w in list(st.workers.values()):
                if w.state == "busy":
                    if (now >= w.deadline and not w.niced) or now >= w.t_start + self.niced_cap_s:
                        finish(w.idx, ScoreResult(0.0, False, "timeout"))
                        self._drop(w, kill=True)
                        replaced()
                    else:
                        if not w.overdue and now >= w.t_start + overdue_after:
                            w.overdue = True  # a spare takes its slot
                            w.cpu_check = now
                        if w.overdue and not w.niced and queue and self.overdue_nice > 0 and now >= w.cpu_check:
                            # Lower its priority only if it has really been
                            # computing: an item that is slow because other
                            # processes hold the CPU is left alone.
                            need = self._renice_after_cpu()
                            cpu = _proc_cpu_s(w.pid)
                            used = (cpu - w.cpu_mark) if cpu is not None else need
                            if used >= need:
                                renice_cpu[w.idx] = used
                                w.niced = True
                                w.niced_at = now
                                self._zsend(("renice", w.pid, self.overdue_nice))
                            else:
                                w.cpu_check = now + max(0.02, need - used)
                elif w.state == "starting" and now >= w.born + self.start_timeout_s:
                    self._drop(w, kill=True)
                    self._start_failures += 1
                    self._check_start_failures()
            for pid, (idx, t) in list(self._dead.items()):
                if now >= t:
                    del self._dead[pid]
                    finish(idx, ScoreResult(0.0, False, "crash"))
                    replaced()

        seconds = time.monotonic() - t0
        self.last_finish_times = finish_times
        self.last_cpu_times = cpu_times
        self.last_renice_cpu = renice_cpu
        out: list[ScoreResult] = [r for r in results]  # type: ignore[misc]
        stats: dict[str, Any] = {"items": n, "seconds": seconds, "items_per_s": n / seconds if seconds > 0 else 0.0}
        for k in ERROR_KINDS:
            stats[k] = sum(1 for r in out if r.error == k)
        by_type = collections.Counter(r.error for r in out if r.error and r.error.startswith("error:"))
        stats["error"] = sum(by_type.values())
        stats["errors_by_type"] = dict(by_type)
        stats["replaced"] = self.replaced_total - replaced0
        stats["reward_mean"] = sum(r.reward for r in out) / n if n else 0.0
        stats["correct_rate"] = sum(1 for r in out if r.correct) / n if n else 0.0
        for i, t in enumerate(self.terms):
            stats[f"term_mean/{i}:{t.fn}"] = term_sums[i] / term_counts[i] if term_counts[i] else 0.0
        return out, stats

    def _drain_zygote(self, finish, replaced) -> None:
        st = self._state
        while st.zconn is not None:
            try:
                if not st.zconn.poll(0):
                    return
                msg = st.zconn.recv()
            except (EOFError, OSError):
                # zygote died; handled at the top of the loop
                try:
                    st.zconn.close()
                except OSError:
                    pass
                st.zconn = None
                return
            kind = msg[0]
            if kind == "spawned":
                _, token, pid = msg
                conn = st.pending.pop(token, None)
                if conn is not None:
                    w = _Worker(pid, conn, time.monotonic())
                    w.born = self._spawn_t.pop(token, w.born)
                    st.workers[pid] = w
            elif kind == "exit":
                _, pid, code = msg
                if pid in self._dead:
                    idx, _ = self._dead.pop(pid)
                    finish(idx, ScoreResult(0.0, False, _death_kind(code)))
                    replaced()
                elif pid in st.workers:
                    # exit seen before the worker's EOF: keep it for then
                    self._exit_codes[pid] = code
                    while len(self._exit_codes) > 256:
                        self._exit_codes.pop(next(iter(self._exit_codes)))

    def _overdue_after(self) -> float:
        """Seconds after which a busy worker is set aside: ``overdue_factor``
        times the 90th percentile of recent successful item durations,
        between ``min_overdue_s`` and ``overdue_s``."""
        n = len(self._durations)
        if n < 20:
            return self.overdue_s
        key = self._n_ok // 16
        if self._overdue_cache[0] != key:
            q = sorted(self._durations)[int(0.9 * (n - 1))]
            thr = min(self.overdue_s, max(self.min_overdue_s, self.overdue_factor * q))
            self._overdue_cache = (key, thr)
        return self._overdue_cache[1]

    def _renice_after_cpu(self) -> float:
        """CPU seconds an overdue item must have used before its worker is
        re-niced: 3 times the 90th percentile of recent items' CPU times (not
        inflated when other processes load the box), between 0.03 s and
        ``overdue_s``."""
        n = len(self._cpu_durations)
        if n < 20:
            return self.overdue_s
        key = self._n_ok // 16
        if self._cpu_cache[0] != key:
            q = sorted(self._cpu_durations)[int(0.9 * (n - 1))]
            self._cpu_cache = (key, min(self.overdue_s, max(0.03, 3.0 * q)))
        return self._cpu_cache[1]

    def _check_start_failures(self) -> None:
        if self._start_failures >= 5:
            self._start_failures = 0
            raise VerifierStartError(
                "5 verifier workers in a row died before becoming ready "
                f"(memory_mb={self.memory_mb} may be too small)"
            )

    # -- lifetime -------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """PIDs of the current worker processes (for tests and monitoring)."""
        if self._lock.acquire(blocking=False):  # never wait for a running score()
            try:
                if not self._state.closed:
                    self._pump_until_ready(0.5)
            finally:
                self._lock.release()
        return list(self._state.workers)

    @property
    def zygote_pid(self) -> int | None:
        z = self._state.zygote
        return z.pid if z is not None else None

    def close(self) -> None:
        """Kill all worker processes and the zygote.  Idempotent."""
        self._finalizer()

    def __enter__(self) -> "ProcessVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._finalizer()
        except Exception:
            pass


def _shutdown_zygote_only(st: _State) -> None:
    if st.zconn is not None:
        try:
            st.zconn.close()
        except OSError:
            pass
        st.zconn = None
    z = st.zygote
    if z is not None:
        if z.poll() is None:
            z.kill()
        try:
            z.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        st.zygote = None


def _death_kind(exit_code: int) -> str:
    """A worker that died without replying: SIGKILL that we did not send is
    the kernel's OOM killer; the worker's own MemoryError exit is ``oom``;
    anything else (segfault, abort, ...) is a crash."""
    return "oom" if exit_code in (_EXIT_OOM, -signal.SIGKILL) else "crash"


def _socket_pipe() -> tuple[Connection, Connection]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Connection(a.detach()), Connection(b.detach())


# ---------------------------------------------------------------------------
# Ray actor
# ---------------------------------------------------------------------------


class _VerifierPoolImpl:
    """Ray actor body: owns one ProcessVerifier."""

    def __init__(self, terms, num_workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 1024, **kwargs):
        from rlvr.logs import redirect_actor_output

        redirect_actor_output()
        self._v = ProcessVerifier(terms, num_workers=num_workers, timeout_s=timeout_s, memory_mb=memory_mb, **kwargs)

    def score(self, requests: list[ScoreRequest]) -> tuple[list[ScoreResult], dict]:
        return self._v.score(requests)

    def worker_pids(self) -> list[int]:
        return self._v.worker_pids()

    def close(self) -> None:
        self._v.close()


def __getattr__(name: str):
    # Ray is imported only when VerifierPool is used: the zygote and the
    # workers import this module and must stay light (and thread-free).
    if name == "VerifierPool":
        import ray

        pool = ray.remote(num_cpus=0.1)(_VerifierPoolImpl)
        globals()["VerifierPool"] = pool
        return pool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
