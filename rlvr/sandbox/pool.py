"""The sandbox's parent side: :class:`ProcessVerifier` scores a batch in worker processes forked by
a zygote, under deadlines, memory limits and crash isolation (see :mod:`rlvr.sandbox`)."""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from multiprocessing.connection import wait
from typing import Any

from rlvr.rewards.spec import RewardSpec, coerce_spec, correctness_terms
from rlvr.sandbox.child import proc_cpu_s
from rlvr.sandbox.messages import (
    ERROR_KINDS,
    ScoreRequest,
    ScoreResult,
    VerifierStartError,
    coerce_request,
    death_kind,
    kernel_oom_kills,
)
from rlvr.sandbox.pacing import Pacing
from rlvr.sandbox.zygote import Worker, Zygote

log = logging.getLogger(__name__)


class _Batch:
    """One ``score()`` call: its requests, the queue, and what has come back."""

    def __init__(self, reqs: list[ScoreRequest], n_terms: int):
        n = len(reqs)
        self.reqs = reqs
        self.t0 = time.monotonic()
        self.results: list[ScoreResult | None] = [None] * n
        self.finish_times = [0.0] * n
        self.cpu_times: list[float | None] = [None] * n
        self.renice_cpu: dict[int, float] = {}  # item -> CPU seconds it had used when its worker was re-niced
        self.term_sums = [0.0] * n_terms
        self.term_counts = [0] * n_terms
        self.queue = collections.deque(range(n))
        self.left = n
        self.oom_kills0 = kernel_oom_kills()

    def finish(self, idx: int, res: ScoreResult) -> None:
        if self.results[idx] is None:
            self.results[idx] = res
            self.finish_times[idx] = time.monotonic() - self.t0
            self.left -= 1

    def death_kind(self, exit_code: int) -> str:
        return death_kind(exit_code, kernel_oom_killed=kernel_oom_kills() > self.oom_kills0)


def _idle_worker_died(w: Worker) -> bool:
    try:
        return bool(w.conn.poll(0))  # an idle worker only speaks when it dies (EOF)
    except (OSError, ValueError):
        return True


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
        self._z = Zygote()
        self._finalizer = weakref.finalize(self, self._z.close)
        self._start_failures = 0
        self._dead: dict[int, tuple[int, float]] = {}  # pid -> (item idx, classify-by time)
        self._exit_codes: dict[int, int] = {}  # pid -> exit code reported before its EOF
        self._lock = threading.Lock()
        self.replaced_total = 0
        # seconds from a spawn request to the worker's "ready" (recent ones)
        self.spawn_latencies: collections.deque[float] = collections.deque(maxlen=1000)
        # seconds from the start of the last score() call to each item's result
        self.last_finish_times: list[float] = []
        # worker CPU seconds per item of the last call (None: the worker died)
        self.last_cpu_times: list[float | None] = []
        # item index -> CPU seconds it had used when its worker was re-niced
        self.last_renice_cpu: dict[int, float] = {}
        # recent successful items' durations, for the adaptive overdue and re-nice thresholds
        self._pacing = Pacing(self.overdue_s, self.overdue_factor, self.min_overdue_s)
        self._z.start(self._zygote_cfg(), self.start_timeout_s)
        self._top_up()
        self._pump_until_ready(self.start_timeout_s)

    def _pump_until_ready(self, timeout: float) -> None:
        """Outside ``score``: handle spawn/ready/exit messages until every
        wanted worker is up (or ``timeout``)."""
        z = self._z
        t_end = time.monotonic() + timeout
        want = self.num_workers + self.num_spares
        while z.conn is not None:
            for w in list(z.workers.values()):
                if w.state == "idle" and _idle_worker_died(w):
                    self._z.drop(w, kill=True)
            self._top_up()
            idle = sum(1 for w in z.workers.values() if w.state == "idle")
            if idle >= want and not z.pending:
                return
            left = t_end - time.monotonic()
            if left <= 0:
                return
            objs = [z.conn] + [w.conn for w in z.workers.values() if w.state != "busy"]
            for obj in wait(objs, left):
                if obj is z.conn:
                    self._drain_zygote(None)
                    continue
                w = next((w for w in z.workers.values() if w.conn is obj), None)
                if w is None:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    self._on_worker_eof(w, time.monotonic(), None)
                    continue
                if msg[0] == "ready":
                    self._on_ready(w, msg, time.monotonic())

    # -- process management -------------------------------------------------

    def _zygote_cfg(self) -> dict:
        return {
            "terms": [(t.fn, t.kwargs, t.style) for t in self.terms],
            "memory_mb": self.memory_mb,
            "soft_timeout_s": max(0.01, 0.8 * self.timeout_s),
        }

    def _top_up(self) -> None:
        for _ in range(max(0, self.num_workers + self.num_spares - self._z.capacity())):
            self._z.spawn()

    def _drain_zygote(self, batch: "_Batch | None") -> None:
        """The zygote's messages; a dead busy worker's item in ``batch`` is classified by its exit status."""
        for pid, code in self._z.drain():
            if pid in self._dead:
                idx, _ = self._dead.pop(pid)
                if batch is not None:
                    batch.finish(idx, ScoreResult(0.0, False, batch.death_kind(code)))
                    self.replaced_total += 1
            elif pid in self._z.workers:
                # exit seen before the worker's EOF: keep it for then
                self._exit_codes[pid] = code
                while len(self._exit_codes) > 256:
                    self._exit_codes.pop(next(iter(self._exit_codes)))

    # -- scoring --------------------------------------------------------------

    def score(self, requests: list[ScoreRequest]) -> tuple[list[ScoreResult], dict]:
        """Score a batch.  Returns one ``ScoreResult`` per request, in order,
        and stats: ``items``, ``seconds``, ``items_per_s``, counts ``timeout``,
        ``oom``, ``crash``, ``error`` (all ``error:*``), ``errors_by_type``, ``error_examples`` (one message per type),
        ``replaced`` (workers replaced), ``outcomes`` (counts of what terms named), ``reward_mean``, ``correct_rate`` and
        ``term_mean/<i>:<fn>``."""
        with self._lock:
            return self._score(requests)

    def _score(self, requests) -> tuple[list[ScoreResult], dict]:
        if self._z.closed:
            raise RuntimeError("ProcessVerifier is closed")
        batch = _Batch([coerce_request(r) for r in requests], len(self.terms))
        replaced0 = self.replaced_total
        # Workers still busy from an interrupted call (KeyboardInterrupt in a
        # previous score()) would answer with stale item indices: drop them.
        for w in list(self._z.workers.values()):
            if w.state == "busy":
                self._z.drop(w, kill=True)
        self._dead.clear()
        while batch.left > 0:
            if self._z.closed:
                raise RuntimeError("ProcessVerifier was closed during score()")
            if not self._z.alive():
                self._recover_zygote(batch)
                if batch.left == 0:
                    break
            self._top_up()
            self._dispatch(batch)
            overdue_after = self._pacing.overdue_after()
            ready = self._wait_for_event(batch, overdue_after)
            self._on_messages(ready, batch)
            if not batch.queue:
                self._restore_niced()
            self._enforce_deadlines(batch, overdue_after)
        return self._batch_stats(batch, replaced0)

    def _recover_zygote(self, batch: "_Batch") -> None:
        """The zygote died: the in-flight items of its workers crash, and a new zygote starts."""
        for w in list(self._z.workers.values()):
            if w.state == "busy":
                batch.finish(w.idx, ScoreResult(0.0, False, "crash"))
        for idx, _ in list(self._dead.values()):
            batch.finish(idx, ScoreResult(0.0, False, "crash"))
        self._dead.clear()
        log.warning("verifier zygote died; restarting it")
        self._z.restart(self._zygote_cfg(), self.start_timeout_s)

    def _dispatch(self, batch: "_Batch") -> None:
        """Hand queued items to idle workers, as many as there are free slots."""
        z = self._z
        busy = [w for w in z.workers.values() if w.state == "busy"]
        n_overdue = sum(1 for w in busy if w.overdue)
        slots = self.num_workers - (len(busy) - n_overdue) - max(0, n_overdue - self.max_overdue)
        if not batch.queue or slots <= 0:
            return
        for w in list(z.workers.values()):
            if slots <= 0 or not batch.queue:
                break
            if w.state != "idle":
                continue
            if _idle_worker_died(w):
                self._z.drop(w, kill=True)
                continue
            idx = batch.queue.popleft()
            r = batch.reqs[idx]
            try:
                w.conn.send((idx, r.completion, r.answer, r.answer_type, r.prompt, r.meta))
            except (OSError, ValueError):
                batch.queue.appendleft(idx)
                self._z.drop(w, kill=True)
                continue
            w.state = "busy"
            w.idx = idx
            w.t_start = time.monotonic()
            w.deadline = w.t_start + self.timeout_s
            w.overdue = False
            slots -= 1

    def _wait_for_event(self, batch: "_Batch", overdue_after: float) -> list:
        """Wait for a message or the next deadline, set-aside time, CPU check or start-up limit."""
        z = self._z
        busy = [w for w in z.workers.values() if w.state == "busy"]
        events = [w.deadline for w in busy if not w.niced]
        events += [w.t_start + self.niced_cap_s for w in busy if w.niced]
        events += [w.t_start + overdue_after for w in busy if not w.overdue]
        if batch.queue and self.overdue_nice > 0:
            events += [w.cpu_check for w in busy if w.overdue and not w.niced]
        events += [t for _, t in self._dead.values()]
        events += [w.born + self.start_timeout_s for w in z.workers.values() if w.state == "starting"]
        timeout = max(0.0, min(events) - time.monotonic()) if events else 1.0
        try:
            return wait([z.conn] + [w.conn for w in z.workers.values()], timeout)
        except OSError:
            return []

    def _on_messages(self, ready: list, batch: "_Batch") -> None:
        z = self._z
        now = time.monotonic()
        by_conn = {id(w.conn): w for w in z.workers.values()}
        for obj in ready:
            if obj is z.conn:
                self._drain_zygote(batch)
                continue
            w = by_conn.get(id(obj))
            if w is None or w.pid not in z.workers:
                continue
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                self._on_worker_eof(w, now, batch)
                continue
            if msg[0] == "ready":
                self._on_ready(w, msg, now)
            elif msg[0] in ("ok", "err") and w.state == "busy" and msg[1] == w.idx:
                self._on_reply(w, msg, now, batch)

    def _on_ready(self, w: Worker, msg: tuple, now: float) -> None:
        w.state = "idle"
        w.cpu_mark = msg[2]
        self._start_failures = 0
        self.spawn_latencies.append(now - w.born)

    def _on_worker_eof(self, w: Worker, now: float, batch: "_Batch | None") -> None:
        """A worker's socket closed: it died. A busy one's item is classified by its exit status."""
        self._z.drop(w)
        if w.state == "busy" and batch is not None:
            code = self._exit_codes.pop(w.pid, None)
            if code is None:
                self._dead[w.pid] = (w.idx, now + 1.0)  # classify when the zygote reports the exit status
            else:
                batch.finish(w.idx, ScoreResult(0.0, False, batch.death_kind(code)))
                self.replaced_total += 1
        elif w.state == "starting":
            self._start_failures += 1
            self._check_start_failures()

    def _on_reply(self, w: Worker, msg: tuple, now: float, batch: "_Batch") -> None:
        """A worker's answer ``(ok|err, idx, values|error, retire, cpu_s)``: finish the item, free or retire the worker."""
        kind, retire = msg[0], msg[3]
        item_cpu = max(0.0, msg[4] - w.cpu_mark)
        batch.cpu_times[w.idx] = item_cpu
        w.cpu_mark = msg[4]
        if kind == "ok":
            self._pacing.record(now - w.t_start, item_cpu)
            batch.finish(w.idx, self._combine(msg[2], batch))
        else:
            error, _, message = msg[2].partition(": ")  # "error:KeyError: 'answer'"
            detail = f"{error.removeprefix('error:')}: {message}" if message else None
            batch.finish(w.idx, ScoreResult(0.0, False, error, detail=detail))
        w.state = "idle"
        w.idx = -1
        w.done += 1
        if w.niced:
            self._z.send(("renice", w.pid, 0))
        w.overdue = w.niced = False
        if retire:
            self.replaced_total += 1
            self._z.retire(w)
        elif w.done >= self.max_items_per_worker:
            self._z.retire(w)
        elif self._z.capacity() > self.num_workers + self.num_spares:
            # a set-aside worker came back after its slot was refilled: the pool is one too big
            self._z.retire(w)

    def _combine(self, payload: tuple[list[float], str | None, str | None], batch: "_Batch") -> ScoreResult:
        """The weighted sum of the terms; correct when every deciding term scored >= 1."""
        values, outcome, output = payload
        reward = 0.0
        for i, (t, v) in enumerate(zip(self.terms, values)):
            reward += t.weight * v
            batch.term_sums[i] += v
            batch.term_counts[i] += 1
        return ScoreResult(float(reward), all(values[i] >= 1.0 for i in self.deciding), None, outcome, output)

    def _restore_niced(self) -> None:
        """The queue is empty: nothing healthy waits for the CPU any more, so overdue items get their
        priority back (a slow but legitimate item is not starved into a timeout)."""
        now = time.monotonic()
        for w in self._z.workers.values():
            if w.niced:
                w.niced = False
                w.deadline += now - w.niced_at  # its clock was paused
                self._z.send(("renice", w.pid, 0))

    def _enforce_deadlines(self, batch: "_Batch", overdue_after: float) -> None:
        now = time.monotonic()
        for w in list(self._z.workers.values()):
            if w.state == "busy":
                if (now >= w.deadline and not w.niced) or now >= w.t_start + self.niced_cap_s:
                    batch.finish(w.idx, ScoreResult(0.0, False, "timeout"))
                    self._z.drop(w, kill=True)
                    self.replaced_total += 1
                else:
                    self._set_aside(w, now, overdue_after, batch)
            elif w.state == "starting" and now >= w.born + self.start_timeout_s:
                self._z.drop(w, kill=True)
                self._start_failures += 1
                self._check_start_failures()
        for pid, (idx, t) in list(self._dead.items()):
            if now >= t:
                del self._dead[pid]
                batch.finish(idx, ScoreResult(0.0, False, "crash"))
                self.replaced_total += 1

    def _set_aside(self, w: Worker, now: float, overdue_after: float, batch: "_Batch") -> None:
        """An overdue item's worker stops counting against ``num_workers``; re-nice it while items queue."""
        if not w.overdue and now >= w.t_start + overdue_after:
            w.overdue = True  # a spare takes its slot
            w.cpu_check = now
        if w.overdue and not w.niced and batch.queue and self.overdue_nice > 0 and now >= w.cpu_check:
            # Lower its priority only if it has really been computing: an item
            # that is slow because other processes hold the CPU is left alone.
            need = self._pacing.renice_after_cpu()
            cpu = proc_cpu_s(w.pid)
            used = (cpu - w.cpu_mark) if cpu is not None else need
            if used >= need:
                batch.renice_cpu[w.idx] = used
                w.niced = True
                w.niced_at = now
                self._z.send(("renice", w.pid, self.overdue_nice))
            else:
                w.cpu_check = now + max(0.02, need - used)

    def _batch_stats(self, batch: "_Batch", replaced0: int) -> tuple[list[ScoreResult], dict]:
        seconds = time.monotonic() - batch.t0
        self.last_finish_times = batch.finish_times
        self.last_cpu_times = batch.cpu_times
        self.last_renice_cpu = batch.renice_cpu
        out: list[ScoreResult] = list(batch.results)  # type: ignore[arg-type]
        n = len(out)
        stats: dict[str, Any] = {"items": n, "seconds": seconds, "items_per_s": n / seconds if seconds > 0 else 0.0}
        for k in ERROR_KINDS:
            stats[k] = sum(1 for r in out if r.error == k)
        by_type = collections.Counter(r.error for r in out if r.error and r.error.startswith("error:"))
        stats["error"] = sum(by_type.values())
        stats["errors_by_type"] = dict(by_type)
        stats["error_examples"] = {}
        for r in out:
            if r.error in by_type:
                stats["error_examples"].setdefault(r.error, r.detail or r.error.removeprefix("error:"))
        stats["replaced"] = self.replaced_total - replaced0
        stats["outcomes"] = dict(collections.Counter(r.outcome for r in out if r.outcome))
        stats["reward_mean"] = sum(r.reward for r in out) / n if n else 0.0
        stats["correct_rate"] = sum(1 for r in out if r.correct) / n if n else 0.0
        for i, t in enumerate(self.terms):
            stats[f"term_mean/{i}:{t.fn}"] = batch.term_sums[i] / batch.term_counts[i] if batch.term_counts[i] else 0.0
        stats["term_sums"] = {f"{i}:{t.fn}": (batch.term_sums[i], batch.term_counts[i]) for i, t in enumerate(self.terms)}
        return out, stats

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
                if not self._z.closed:
                    self._pump_until_ready(0.5)
            finally:
                self._lock.release()
        return list(self._z.workers)

    @property
    def zygote_pid(self) -> int | None:
        proc = self._z.proc
        return proc.pid if proc is not None else None

    def close(self) -> None:
        """Kill all worker processes and the zygote.  Idempotent."""
        self._finalizer()

    def __enter__(self) -> "ProcessVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
