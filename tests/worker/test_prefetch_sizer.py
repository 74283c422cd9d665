"""`PrefetchSizer`: how many tasks an execution manager holds, from observed task run times.
Pure and deterministic (observations are given, nothing is timed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from orbweaver.worker.config import WorkerConfig
from orbweaver.worker.prefetch import PREFETCH_INITIAL, PrefetchSizer

TINY_S = 50e-6  # a no-op task
SLOW_S = 0.2


def test_starts_modestly_before_any_observation() -> None:
    sizer = PrefetchSizer(executors=4)
    assert sizer.average_s is None
    assert sizer.ahead == PREFETCH_INITIAL == 4
    assert sizer.limit == 4 * (1 + PREFETCH_INITIAL)


def test_tiny_tasks_grow_twofold_per_observation_up_to_the_maximum() -> None:
    sizer = PrefetchSizer(executors=2, max_ahead=256)
    seen = []
    for _ in range(8):
        sizer.observe(TINY_S)
        seen.append(sizer.ahead)
    assert seen == [8, 16, 32, 64, 128, 256, 256, 256]
    assert sizer.limit == 2 * 257
    assert sizer.average_s == pytest.approx(TINY_S)


def test_the_maximum_bounds_tiny_tasks() -> None:
    sizer = PrefetchSizer(executors=3, max_ahead=16)
    for _ in range(10):
        sizer.observe(TINY_S)
    assert sizer.ahead == 16
    assert sizer.limit == 3 * 17


def test_slow_tasks_keep_one_task_queued_per_executor() -> None:
    sizer = PrefetchSizer(executors=2)
    sizer.observe(SLOW_S)
    assert sizer.ahead == 1  # shrinks at once
    assert sizer.limit == 2 * 2
    for _ in range(100):
        sizer.observe(5.0)
    assert sizer.ahead == 1  # never below one task
    assert sizer.limit == 4


@pytest.mark.parametrize(
    ("task_s", "ahead"), [(0.05, 1), (0.02, 2), (0.01, 5), (0.001, 50), (0.0002, 250)]
)
def test_about_fifty_milliseconds_of_work_per_executor(task_s: float, ahead: int) -> None:
    sizer = PrefetchSizer(executors=1)
    for _ in range(20):
        sizer.observe(task_s)
    assert sizer.average_s == pytest.approx(task_s)
    assert sizer.ahead == ahead
    assert sizer.ahead * task_s == pytest.approx(0.05, rel=0.25)


def test_moving_average_weighs_recent_tasks() -> None:
    sizer = PrefetchSizer(executors=1, weight=0.5)
    sizer.observe(0.01)
    sizer.observe(0.03)
    assert sizer.average_s == pytest.approx(0.02)
    sizer.observe(0.06)
    assert sizer.average_s == pytest.approx(0.04)


def test_tasks_getting_slower_shrink_the_window_within_a_few_observations() -> None:
    sizer = PrefetchSizer(executors=1)
    for _ in range(20):
        sizer.observe(TINY_S)
    assert sizer.ahead == 256
    sizer.observe(SLOW_S)  # the average jumps to about 40 ms
    assert sizer.ahead == 1


def test_tasks_getting_faster_grow_the_window_gradually() -> None:
    sizer = PrefetchSizer(executors=1)
    for _ in range(20):
        sizer.observe(SLOW_S)
    assert sizer.ahead == 1
    aheads = []
    for _ in range(40):
        sizer.observe(TINY_S)
        aheads.append(sizer.ahead)
    assert aheads == sorted(aheads), "growth is monotonic while tasks stay tiny"
    assert all(b <= 2 * a for a, b in zip([1, *aheads], aheads, strict=False))
    assert aheads[0] == 1  # one fast task does not undo a long history of slow ones
    assert aheads[-1] == 256


@pytest.mark.parametrize("elapsed", [0.0, -1.0, math.nan, math.inf])
def test_meaningless_observations_are_ignored(elapsed: float) -> None:
    sizer = PrefetchSizer(executors=2)
    sizer.observe(elapsed)
    assert sizer.average_s is None
    assert sizer.ahead == PREFETCH_INITIAL
    sizer.observe(0.01)
    sizer.observe(elapsed)
    assert sizer.average_s == pytest.approx(0.01)


def test_a_maximum_below_the_initial_size_caps_it() -> None:
    assert PrefetchSizer(executors=2, max_ahead=1).limit == 2 * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"executors": 0}, "executors must be at least 1, got 0"),
        ({"executors": 1, "max_ahead": 0}, "max_ahead must be at least 1, got 0"),
        ({"executors": 1, "target_s": 0.0}, "target_s must be positive"),
        ({"executors": 1, "weight": 0.0}, "weight must be in"),
    ],
)
def test_invalid_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrefetchSizer(**kwargs)  # type: ignore[arg-type]


def test_worker_config_rejects_a_prefetch_below_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prefetch must be at least 1, got 0"):
        WorkerConfig(storage="a:1", scheduler="b:1", tasks_dir=tmp_path, prefetch=0)


def test_the_manager_module_still_exports_its_public_names() -> None:
    from orbweaver.worker import config, manager, prefetch

    assert manager.WorkerConfig is config.WorkerConfig
    assert manager.PrefetchSizer is prefetch.PrefetchSizer
    assert manager.PREFETCH_INITIAL == prefetch.PREFETCH_INITIAL
