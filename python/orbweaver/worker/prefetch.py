"""How many tasks an execution manager holds at a time, from the task run times it observes.
Pure and deterministic: observations are given, nothing is timed."""

from __future__ import annotations

import math
from typing import Final

# Queued work the EM aims to hold per executor, on top of the task it runs.
PREFETCH_TARGET_S: Final = 0.05
# Tasks queued per executor before any task run time has been observed.
PREFETCH_INITIAL: Final = 4
# Weight of the newest observation in the moving average of task run times.
PREFETCH_EWMA_WEIGHT: Final = 0.2


class PrefetchSizer:
    """How many tasks an execution manager holds for `executors` executor processes, from an
    exponentially weighted moving average of the observed task run times.

    `ahead` (tasks queued per executor beyond the one it runs) is about `target_s` of work: at
    least 1, at most `max_ahead`. It starts at `initial` and grows at most twofold per
    observation (a first slow run, such as one that imports the task module, settles before the
    EM takes much), and shrinks at once when tasks get slower. `limit` is what the EM may hold
    at a time: being fetched or registered, queued, or running. Not thread-safe."""

    def __init__(
        self,
        executors: int,
        max_ahead: int = 256,
        *,
        target_s: float = PREFETCH_TARGET_S,
        initial: int = PREFETCH_INITIAL,
        weight: float = PREFETCH_EWMA_WEIGHT,
    ) -> None:
        if executors < 1:
            raise ValueError(f"prefetch: executors must be at least 1, got {executors}")
        if max_ahead < 1:
            raise ValueError(f"prefetch: max_ahead must be at least 1, got {max_ahead}")
        if not target_s > 0:
            raise ValueError(f"prefetch: target_s must be positive, got {target_s}")
        if not 0 < weight <= 1:
            raise ValueError(f"prefetch: weight must be in (0, 1], got {weight}")
        self.executors = executors
        self.max_ahead = max_ahead
        self.target_s = target_s
        self.weight = weight
        self._ahead = max(1, min(max_ahead, initial))
        self._average: float | None = None

    @property
    def average_s(self) -> float | None:
        """The moving average of task run times (None before the first observation)."""
        return self._average

    @property
    def ahead(self) -> int:
        """Tasks queued per executor, beyond the one it runs."""
        return self._ahead

    @property
    def limit(self) -> int:
        """Tasks the EM may hold at a time."""
        return self.executors * (1 + self._ahead)

    def wanted(self, average_s: float) -> int:
        """`ahead` for tasks that take `average_s` each, before the growth limit."""
        return max(1, min(self.max_ahead, round(self.target_s / average_s)))

    def observe(self, elapsed_s: float) -> None:
        """One task ran for `elapsed_s` seconds (ignored unless positive and finite)."""
        if not (elapsed_s > 0 and math.isfinite(elapsed_s)):
            return
        if self._average is None:
            self._average = elapsed_s
        else:
            self._average += self.weight * (elapsed_s - self._average)
        wanted = self.wanted(self._average)
        self._ahead = wanted if wanted <= self._ahead else min(wanted, 2 * self._ahead)
