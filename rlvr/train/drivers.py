"""The two drivers that feed `rlvr.train.loop.train_step` batches: `sync_batches` (generate, then
train: exact resume) and `AsyncBatches` (trainer.max_staleness >= 1: the next batch is generated
while this one trains)."""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

from rlvr.types import Batch


def sync_batches(make_batch: Callable[[int], Batch], first: int, last: int) -> Iterator[Batch]:
    """max_staleness = 0: batch s is generated after step s-1's weights reached the engines."""
    for step in range(first, last + 1):
        yield make_batch(step)


class AsyncBatches:
    """max_staleness = k >= 1: a thread generates the next batches while the learners train.

    The batch of step s starts generating once the weights of step s-1-ahead are on the engines
    (`ahead` = trainer.generate_ahead, default k), so with ahead = k nothing it samples is ever
    older than the bound when trained; a larger `ahead` keeps the engines busier, and what goes
    stale is dropped (`trainable`). Weight loads queue on each engine between generate calls, so
    a sync stalls generation by the load alone.
    """

    def __init__(self, make_batch: Callable[[int], Batch], first: int, last: int, ahead: int):
        self.make_batch, self.first, self.last, self.ahead = make_batch, first, last, ahead
        self.synced = first - 1  # the weight version on the engines
        self.changed = threading.Condition()
        self.stopping = False
        self.ready: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._generate, name="rlvr-generate", daemon=True)
        self.thread.start()

    def _generate(self) -> None:
        try:
            for step in range(self.first, self.last + 1):
                start = time.perf_counter()
                with self.changed:
                    self.changed.wait_for(lambda: self.stopping or self.synced >= step - 1 - self.ahead)
                    if self.stopping:
                        return
                waited = time.perf_counter() - start
                batch = self.make_batch(step)
                batch.stats["time/generator_wait"] = waited  # generation waiting for weights
                self.ready.put(batch)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
            self.ready.put(e)

    def __iter__(self) -> Iterator[Batch]:
        for _ in range(self.first, self.last + 1):
            start = time.perf_counter()
            item = self.ready.get()
            if isinstance(item, BaseException):
                raise item
            item.stats["time/learner_wait"] = time.perf_counter() - start  # learning waiting for data
            yield item

    def synced_version(self, version: int) -> None:
        with self.changed:
            self.synced = version
            self.changed.notify_all()

    def close(self, timeout_s: float = 300) -> None:
        """Stop after the batch in flight (it is discarded: resume regenerates it)."""
        with self.changed:
            self.stopping = True
            self.changed.notify_all()
        self.thread.join(timeout=timeout_s)
