"""How long is too long for an item: thresholds that adapt to the durations of recent items."""

from __future__ import annotations

import collections


class Pacing:
    """Recent successful items' wall and CPU seconds, and the two thresholds read from them.

    Until 20 items have been scored both thresholds are ``overdue_s``; after that each is a multiple
    of the 90th percentile of the last 256 items, recomputed every 16 items.
    """

    def __init__(self, overdue_s: float, overdue_factor: float, min_overdue_s: float):
        self.overdue_s = overdue_s
        self.overdue_factor = overdue_factor
        self.min_overdue_s = min_overdue_s
        self._wall: collections.deque[float] = collections.deque(maxlen=256)
        self._cpu: collections.deque[float] = collections.deque(maxlen=256)
        self._n_ok = 0
        self._cache: dict[str, tuple[int, float]] = {}

    def record(self, wall_s: float, cpu_s: float) -> None:
        self._wall.append(wall_s)
        self._cpu.append(cpu_s)
        self._n_ok += 1

    def _scaled_p90(self, name: str, samples: collections.deque, factor: float, lowest: float) -> float:
        n = len(samples)
        if n < 20:
            return self.overdue_s
        key = self._n_ok // 16
        cached = self._cache.get(name)
        if cached is None or cached[0] != key:
            q = sorted(samples)[int(0.9 * (n - 1))]
            cached = self._cache[name] = (key, min(self.overdue_s, max(lowest, factor * q)))
        return cached[1]

    def overdue_after(self) -> float:
        """Seconds after which a busy worker is set aside: ``overdue_factor`` times the 90th
        percentile of recent successful item durations, between ``min_overdue_s`` and ``overdue_s``."""
        return self._scaled_p90("wall", self._wall, self.overdue_factor, self.min_overdue_s)

    def renice_after_cpu(self) -> float:
        """CPU seconds an overdue item must have used before its worker is re-niced: 3 times the 90th
        percentile of recent items' CPU times (not inflated when other processes load the box),
        between 0.03 s and ``overdue_s``."""
        return self._scaled_p90("cpu", self._cpu, 3.0, 0.03)
