"""What a backend is: one module holding both ends of its wire (the learner's send, the engine's
receive, as functions the actors call) and `sync`, the driver's side of one sync.

    def sync(learners, engines, version, bucket_mb, deadlines, on_failure, start) -> (bytes sent, `wait_loads`'s report)

Both sides of a sync have a deadline (`Deadlines`), so a stopped process on either side cannot hang
the run: `wait_loads` is the engines' end of every backend's sync (each load within
`deadlines.engines`; a lost engine is handed to `on_failure`, or raises), and every wait on the
learners passes `deadlines.learners` to `ray.get`, whose `GetTimeoutError` the loop treats as a
lost learner.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

OnFailure = Callable[[dict[int, BaseException], float], None]


class Deadlines(NamedTuple):
    """Seconds one sync waits on each side (None: for ever)."""

    engines: float | None  # each engine's load
    learners: float | None  # each wait on the learner ranks (export, share, broadcast)
    engines_key: str = "rollout.timeout_s"  # the config key that set `engines`, for the message


NO_DEADLINES = Deadlines(None, None)


def wait_loads(loads: list, deadlines: Deadlines, on_failure: Callable | None, start: float) -> dict[str, float]:
    """The slowest engine's load seconds and the largest engine's resident memory, now and at its
    high-water mark, over the engines that answered (each answers `RolloutEngine._load`'s report). Without `on_failure` a lost
    engine raises (a missed deadline as `TimeoutError`); with it, the lost engines are handed to it by index."""
    from rlvr.runtime.faults import gather  # Ray's; the backends' two ends import without it

    answers, failures = gather(dict(enumerate(loads)), deadlines.engines, deadlines.engines_key)
    if failures and on_failure is None:
        raise next(iter(failures.values()))
    if failures:
        on_failure(failures, start)
    reports = list(answers.values())
    return {"sync/load_s": max((r["load_s"] for r in reports), default=0.0),
            **{f"rollout/{k}": max((r[k] for r in reports), default=float("nan")) for k in ("rss_mb", "peak_rss_mb")}}
