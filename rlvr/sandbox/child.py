"""The sandbox's child processes: the zygote, which imports the reward functions once and forks
workers on request, and the worker loop, which scores one item at a time under its own CPU timer
and memory limit.  Runs only in the children: keep it light and thread-free (no Ray, no torch).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import traceback
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait

from rlvr.sandbox.messages import EXIT_OOM

# The zygote's entry point, run by ``python -c`` in a fresh interpreter.
BOOT = (
    "import json, os, sys\n"
    "sys.path[:] = json.loads(os.environ.pop('RLVR_VERIFIER_SYS_PATH'))\n"
    "fd = int(os.environ.pop('RLVR_VERIFIER_FD'))\n"
    "from rlvr.sandbox.child import zygote_main\n"
    "zygote_main(fd)\n"
)


class _SoftTimeout(BaseException):
    """Raised in a worker by its own CPU-time timer (not an Exception, so
    library code that swallows ``Exception`` cannot swallow it)."""


_armed = False


def _on_alarm(signum, frame):  # pragma: no cover - runs in workers
    global _armed
    if _armed:
        _armed = False
        raise _SoftTimeout()


_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except Exception:  # pragma: no cover - non-Linux
        pass


def _children() -> list[int]:
    """This process's children, every thread's (a process started by a thread is that thread's child)."""
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:  # pragma: no cover
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            pass
    return pids


def kill_strays(keep: set[int], wait: bool, rounds: int = 1000) -> int:
    """SIGKILL every child not in ``keep``; with ``wait``, reap them and repeat until none is left.

    The caller is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so the orphans of a killed child,
    a double fork or a ``setsid`` included, become its children in turn: repeating reaches every
    descendant. ``rounds`` bounds a fork bomb. Returns how many processes were killed.
    """
    killed = 0
    for _ in range(rounds):
        strays = [p for p in _children() if p not in keep]
        if not strays:
            break
        for pid in strays:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        if not wait:
            break
        for pid in strays:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return killed


def cpu_s() -> float:
    """CPU seconds (user + system) this process has used."""
    t = os.times()
    return t.user + t.system


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float | None:
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


def _worker_setup(zygote_pid: int, cfg: dict) -> None:  # pragma: no cover - child
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote_pid:
        os._exit(1)
    # Everything an item starts is the worker's: its own process group, and the orphans of a double
    # fork or a new session come back to it, so that they can be killed when the item ends.
    os.setpgid(0, 0)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGPROF, _on_alarm)
    import resource

    # no core file; and 1 is the one value a core_pattern pipe handler respects (0 where it must stay)
    resource.setrlimit(resource.RLIMIT_CORE, (1, 1) if resource.getrlimit(resource.RLIMIT_CORE)[1] != 0 else (0, 0))
    if cfg["memory_mb"]:
        limit = _vm_size_bytes() + int(cfg["memory_mb"]) * 2**20
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass


def _first_line(e: BaseException) -> str:  # pragma: no cover - child
    """The first line of an exception's message, at most 200 characters: what the driver's log shows."""
    try:
        text = str(e)
    except BaseException:  # noqa: BLE001 - an exception whose __str__ fails still has a type
        return ""
    return text.strip().split("\n", 1)[0][:200]


def _score_item(msg: tuple, terms: list, soft_s: float) -> tuple[tuple, bool, bool]:  # pragma: no cover - child
    """(reply, retire the worker, exit after replying) for one item: every term's value, or the error."""
    global _armed
    from rlvr.rewards import call_reward

    idx, completion, answer, answer_type, prompt, meta = msg
    retire = exit_after = False
    try:
        try:
            _armed = True
            signal.setitimer(signal.ITIMER_PROF, soft_s)
            scored = [call_reward(fn, style, completion, answer, answer_type, prompt, meta, kwargs) for fn, kwargs, style in terms]
            _armed = False
            outcome = next((o for _, o, _ in scored if o is not None), None)
            output = next((t for _, _, t in scored if t is not None), None)
            reply = ("ok", idx, ([v for v, _, _ in scored], outcome, output))
        except _SoftTimeout:
            reply, retire = ("err", idx, "timeout"), True
        except MemoryError:
            _armed = False
            scored = None
            reply, exit_after = ("err", idx, "oom"), True
        except RecursionError:
            _armed = False
            reply, retire = ("err", idx, "error:RecursionError"), True
        except BaseException as e:  # noqa: BLE001 - untrusted code, report everything (BadRewardValue too)
            _armed = False
            reply = ("err", idx, f"error:{type(e).__name__}: {_first_line(e)}")
    except _SoftTimeout:  # the timer fired between the inner handler and disarming
        reply, retire = ("err", idx, "timeout"), True
    _armed = False
    signal.setitimer(signal.ITIMER_PROF, 0)
    return reply, retire, exit_after


OUTPUT_PER_ITEM = 64 * 1024  # characters of a reward function's print()s kept per item, as the sandbox keeps a program's


class CappedOutput(io.TextIOBase):  # pragma: no cover - child
    """A worker's sys.stdout/sys.stderr: ``limit`` characters an item, then one note. A reward function
    that printed 100 MB an item wrote 800 MB of log a step."""

    def __init__(self, stream, limit: int = OUTPUT_PER_ITEM):
        self.stream, self.limit, self.left, self.noted = stream, limit, limit, False

    def write(self, text: str) -> int:
        kept = text[: max(self.left, 0)]
        if kept:
            self.stream.write(kept)
            self.left -= len(kept)
        if len(kept) < len(text) and not self.noted:
            self.noted = True
            self.stream.write(f"\n[rlvr: a reward function's output past {self.limit} characters on this item is dropped]\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return self.stream.encoding

    @property
    def errors(self) -> str | None:
        return self.stream.errors

    def writable(self) -> bool:
        return True

    def next_item(self) -> None:
        self.left, self.noted = self.limit, False

    def __getattr__(self, name: str):  # buffer, reconfigure, isatty, ...: the stream's own (bytes are not capped)
        return getattr(self.stream, name)


def _cap_log_handlers(capped: dict) -> None:  # pragma: no cover - child
    """A logging handler a reward module made at import (before the worker's streams were capped)
    writes to the original stream: point it at the capped one."""
    import logging

    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))]
    for handler in (h for logger in loggers for h in logger.handlers):
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in capped:
            handler.setStream(capped[id(handler.stream)])


def worker_main(fd: int, zygote_pid: int, cfg: dict, terms: list) -> None:  # pragma: no cover - child
    """Score items from ``fd`` until it closes: reply ``(ok|err, idx, (values, outcome, output)|error, retire, cpu_s)``."""
    conn = Connection(fd)
    _worker_setup(zygote_pid, cfg)
    out, err = (CappedOutput(s) if s is not None else CappedOutput(io.StringIO(), 0) for s in (sys.stdout, sys.stderr))
    _cap_log_handlers({id(sys.stdout): out, id(sys.stderr): err})
    conn.send(("ready", os.getpid(), cpu_s()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if msg is None:
            os._exit(0)
        sys.stdout, sys.stderr = out, err  # again each item: a reward function may have put its own in
        out.next_item(), err.next_item()
        reply, retire, exit_after = _score_item(msg, terms, cfg["soft_timeout_s"])
        out.flush(), err.flush()
        kill_strays(set(), wait=True)  # no process outlives its item
        try:
            conn.send(reply + (retire or exit_after, cpu_s()))
        except BaseException:
            os._exit(EXIT_OOM if exit_after else 1)
        if exit_after:
            os._exit(EXIT_OOM)


class _Zygote:  # pragma: no cover - child
    """Forks workers on request, reaps them and reports their exit status; kills them on request or shutdown."""

    def __init__(self, conn: Connection, cfg: dict, terms: list):
        self.conn, self.cfg, self.terms = conn, cfg, terms
        self.children: set[int] = set()
        self.me = os.getpid()
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # a killed worker's orphans come here, to be killed
        self.rfd, self.wfd = os.pipe()  # SIGCHLD wakes the loop through this pipe
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        signal.signal(signal.SIGCHLD, lambda *a: None)
        signal.set_wakeup_fd(self.wfd)

    def reap(self) -> None:
        """Reap dead children and report a worker's exit; then kill the orphans that came here (a dead
        worker's or a dead orphan's children), which are reaped in turn when their SIGCHLD comes."""
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
            if pid in self.children:
                self.children.discard(pid)
                try:
                    self.conn.send(("exit", pid, os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
        if reaped:
            kill_strays(self.children, wait=False)

    def kill(self, pid: int) -> None:
        """Kill a worker and its process group (what its item started and has not left)."""
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def shutdown(self) -> None:
        for pid in list(self.children):
            self.kill(pid)
        kill_strays(set(), wait=True)
        os._exit(0)

    def spawn(self, token: int) -> None:
        try:
            wfd_child = reduction.recv_handle(self.conn)
        except (EOFError, OSError):
            self.shutdown()
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(self.rfd)
                os.close(self.wfd)
                self.conn.close()
                worker_main(wfd_child, self.me, self.cfg, self.terms)
            finally:
                os._exit(1)
        os.close(wfd_child)
        self.children.add(pid)
        self.conn.send(("spawned", token, pid))

    def serve(self) -> None:
        """Handle ``spawn``, ``kill``, ``renice`` and ``shutdown`` until the pool's end of the socket closes."""
        while True:
            try:
                ready = wait([self.conn, self.rfd])
            except OSError:
                self.shutdown()
            if self.rfd in ready:
                try:
                    while os.read(self.rfd, 512):
                        pass
                except OSError:
                    pass
            self.reap()
            if self.conn not in ready:
                continue
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                self.shutdown()
            op = msg[0]
            if op == "spawn":
                self.spawn(msg[1])
            elif op == "kill" and msg[1] in self.children:
                self.kill(msg[1])
            elif op == "renice" and msg[1] in self.children:
                try:
                    os.setpriority(os.PRIO_PROCESS, msg[1], msg[2])
                except OSError:
                    pass
            elif op == "shutdown":
                self.shutdown()


def zygote_main(fd: int) -> None:  # pragma: no cover - child
    """Import the reward terms and warm math-verify up (before any fork), say ``ready``, then serve."""
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        cfg = conn.recv()
        from rlvr import rewards

        rewards.configure(None)
        terms = [(rewards.load_reward_fn(fn), dict(kwargs), style) for fn, kwargs, style in cfg["terms"]]
        if any(fn == "math" for fn, _, _ in cfg["terms"]):
            rewards.warmup()
        if any(fn == "code_tests" for fn, _, _ in cfg["terms"]):
            from rlvr.sandbox.bubblewrap import probe

            probe()  # no sandbox, no start: model code never runs unsandboxed
        import gc

        gc.collect()
        gc.freeze()  # keep the warmed-up heap shared copy-on-write with the workers
    except BaseException:
        try:
            conn.send(("start_error", traceback.format_exc()))
        finally:
            os._exit(1)
    zygote = _Zygote(conn, cfg, terms)
    conn.send(("ready", zygote.me))
    zygote.serve()
