"""What a backend is: one module holding both ends of its wire (the learner's send, the engine's
receive, as functions the actors call) and `sync`, the driver's side of one sync.

    def sync(learners, engines, version, bucket_mb, timeout_s, on_failure, start) -> (bytes sent, load seconds)

`wait_loads` is the engines' end of every backend's sync: each load has a deadline, and a lost
engine is handed to `on_failure` (or raises) instead of hanging the run.
"""

from __future__ import annotations

from typing import Callable

from rlvr.runtime.faults import gather

OnFailure = Callable[[dict[int, BaseException], float], None]


def wait_loads(loads: list, timeout_s: float | None, on_failure: Callable | None, start: float) -> float:
    """The slowest engine's load seconds. Without `on_failure` a lost engine raises (a missed
    deadline as `TimeoutError`); with it, the lost engines are handed to it by index."""
    answers, failures = gather(dict(enumerate(loads)), timeout_s, "rollout.timeout_s")
    if failures and on_failure is None:
        raise next(iter(failures.values()))
    if failures:
        on_failure(failures, start)
    return max(answers.values(), default=0.0)
