"""The sandbox: reward functions (and, next, model code) run in isolated worker processes.

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

Modules: ``messages`` (what crosses the boundary), ``child`` (the zygote and worker loops, run in
the children), ``zygote`` (the parent's handle on them), ``pacing`` (adaptive thresholds), ``pool``
(:class:`ProcessVerifier`, the scheduler) and ``actor`` (``VerifierPool``, a thin Ray actor around a
``ProcessVerifier``). What a reward computes lives in :mod:`rlvr.rewards`; nothing here changes
for a new reward.
"""

from rlvr.rewards.spec import RewardSpec
from rlvr.sandbox.messages import ERROR_KINDS, ScoreRequest, ScoreResult, VerifierStartError
from rlvr.sandbox.pool import ProcessVerifier

__all__ = ["ERROR_KINDS", "ProcessVerifier", "RewardSpec", "ScoreRequest", "ScoreResult", "VerifierStartError"]
