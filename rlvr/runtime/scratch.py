"""A process's own temporary directory, removed by the next one once its owner is gone.

vLLM rendezvouses its process group in a file it names under `tempfile.gettempdir()`
(`vllm_dist_<uuid>`), and only the process group's orderly destruction removes it. Every engine
rlvr stops is `ray.kill`ed (a SIGKILL), so each engine started left one behind in /tmp: 101 of them
after a day of test runs. A SIGKILLed process runs no clean-up of its own, so the next process to
take a directory sweeps the ones whose owners died.

Ownership is an `flock` held for the owner's lifetime: the kernel drops it when the process dies,
however it dies, and it is seen across PID namespaces that share the file system (a PID check is not).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

LOCK = ".owner.lock"
_owned: dict[str, tuple[str, int]] = {}  # prefix -> the directory and its lock's descriptor, open for the life of the process


def own_tempdir(prefix: str, base: str | None = None) -> str:
    """Make a directory ``<base>/<prefix>XXXX`` (base: the system temp dir), held by this process
    until it exits, and remove every ``<prefix>*`` directory there whose owner has exited. A second
    call with the same prefix (a kept engine made anew) returns the first one's directory."""
    if prefix in _owned:
        path, fd = _owned.pop(prefix)
        if os.path.isdir(path):
            _owned[prefix] = (path, fd)
            return path
        os.close(fd)  # removed under it (a temp cleaner): a new one where the first was, not in tempfile's dir, which was it
        base = base or os.path.dirname(path)
    base = base or tempfile.gettempdir()
    for old in Path(base).glob(prefix + "*"):
        sweep_if_orphaned(old)
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    # locked under another name and then renamed, so no sweeper ever finds the lock file unlocked
    fd = os.open(os.path.join(path, LOCK + ".new"), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(os.path.join(path, LOCK + ".new"), os.path.join(path, LOCK))
    _owned[prefix] = (path, fd)
    return path


def sweep_if_orphaned(path: Path, unlocked_for_s: float = 3600) -> bool:
    """Remove ``path`` if no live process holds its lock; True when removed. One without a lock
    file (its owner died between making it and locking it) goes once ``unlocked_for_s`` old."""
    try:
        fd = os.open(path / LOCK, os.O_RDWR)
    except FileNotFoundError:
        try:
            if time.time() - path.stat().st_mtime > unlocked_for_s:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
        return not path.exists()
    except OSError:
        return False  # not ours to open
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # its owner is alive
    shutil.rmtree(path, ignore_errors=True)
    os.close(fd)
    return not path.exists()
