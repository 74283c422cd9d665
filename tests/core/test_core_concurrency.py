"""Many Python threads driving one engine through the batch entry points (the GIL is released
inside the core, so this exercises real concurrency)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest

from orbweaver import _core as core

from ._helpers import bin_value, expected_outputs, graph, neuron, submission, task

TIMEOUT_S = 60


def nn_doc(layers: int, width: int, fan_in: int, policy: dict[str, int]) -> dict[str, object]:
    import random

    rng = random.Random(11)
    tasks = []
    for layer in range(layers):
        for _ in range(width):
            if layer == 0:
                tasks.append(task("neuron", 1, 1, None, policy))
            else:
                base = (layer - 1) * width
                tasks.append(
                    task(
                        "neuron",
                        fan_in,
                        1,
                        [(base + rng.randrange(width), 0) for _ in range(fan_in)],
                        policy,
                    )
                )
    return graph(tasks, commit=True, cleanup=True)


class Driver:
    """Mock scheduler + EMs; also plays the storage service for outcomes."""

    def __init__(self, cache: core.JobCache, job: int, fail_first: bool) -> None:
        self.cache = cache
        self.job = job
        self.fail_first = fail_first
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.failed_once: set[int] = set()
        self.succeeded: Counter[int] = Counter()
        self.unexpected: list[BaseException] = []
        self.commit_runs = 0
        self.cleanup_runs = 0

    def apply(self, o: core.Outcome) -> None:
        now = int(time.monotonic() * 1000)
        try:
            if o.kind == core.OUTCOME_JOB_COMPLETED:
                state = self.cache.complete(self.job, now)
            elif o.kind == core.OUTCOME_JOB_FAILED:
                self.cache.fail(self.job, o.message or "", now)
                state = core.JOB_FAILED
            else:
                with self.lock:
                    if o.kind == core.OUTCOME_COMMIT_SUCCEEDED:
                        self.commit_runs += 1
                    else:
                        self.cleanup_runs += 1
                state = self.cache.finish(self.job, now)
        except core.StaleError:
            return
        if core.is_terminal(state):
            self.done.set()

    def worker(self, em: int) -> None:
        try:
            while not self.done.is_set():
                tasks, commit, cleanup = self.cache.poll_all(64, 1, 1, 5)
                items = [(j, t) for _, j, t in tasks + commit + cleanup]
                if not items:
                    continue
                regs = self.cache.register_batch(items, em, 0)
                reports: list[tuple[int, int, int, bytes | str]] = []
                for ctx in regs:
                    if isinstance(ctx, core.StaleError):
                        continue
                    if not isinstance(ctx, core.ExecutionContext):
                        raise ctx
                    if ctx.task_id < 0:
                        reports.append((ctx.job_id, ctx.task_id, ctx.instance_id, b""))
                        continue
                    with self.lock:
                        first = self.fail_first and ctx.task_id not in self.failed_once
                        self.failed_once.add(ctx.task_id)
                    if first and ctx.task_id % 2 == 0:
                        reports.append((ctx.job_id, ctx.task_id, ctx.instance_id, "injected"))
                        continue
                    out = neuron(core.wire_decode(ctx.task_io))
                    reports.append(
                        (ctx.job_id, ctx.task_id, ctx.instance_id, core.wire_encode([out]))
                    )
                for (_, t, _, payload), res in zip(
                    reports, self.cache.report_batch(reports), strict=True
                ):
                    if isinstance(res, core.StaleError):
                        continue
                    if isinstance(res, BaseException):
                        raise res
                    if isinstance(payload, bytes) and t >= 0:
                        with self.lock:
                            self.succeeded[t] += 1
                    if res is not None:
                        self.apply(res)
        except BaseException as e:  # pragma: no cover - reported by the test
            self.unexpected.append(e)
            self.done.set()

    def run(self, threads: int, cancel_after_s: float | None = None) -> int:
        workers = [threading.Thread(target=self.worker, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        if cancel_after_s is not None:
            time.sleep(cancel_after_s)
            try:
                if core.is_terminal(self.cache.cancel(self.job, 0)):
                    self.done.set()
            except core.StaleError:
                pass
        finished = self.done.wait(TIMEOUT_S)
        self.done.set()
        self.cache.close()
        for w in workers:
            w.join(TIMEOUT_S)
        assert not self.unexpected, self.unexpected
        assert finished, "job did not terminate"
        return self.cache.state(self.job)


def test_eight_threads_run_a_2000_task_nn_job() -> None:
    policy = {"max_num_retry": 1, "max_num_instances": 2}
    doc = nn_doc(8, 250, 4, policy)
    inputs = [bytes([i % 251]) * 16 for i in range(250)]
    cache = core.JobCache(task_capacity=128)  # small lane: exercises the spill path too
    cache.insert(1, 3, submission(doc, inputs))
    cache.start(1)
    d = Driver(cache, 1, fail_first=True)
    assert d.run(8) == core.JOB_SUCCEEDED
    assert sorted(d.succeeded) == list(range(2000))
    assert set(d.succeeded.values()) == {1}, "first success wins, exactly once per task"
    assert d.commit_runs == 1 and d.cleanup_runs == 0
    tasks = doc["tasks"]
    assert isinstance(tasks, list)
    assert core.decode_outputs(cache.outputs(1)) == expected_outputs(tasks, inputs)
    assert cache.live_instances() == 0


@pytest.mark.parametrize("delay", [0.0, 0.001, 0.005])
def test_cancel_races_end_consistently(delay: float) -> None:
    for _ in range(3):
        doc = nn_doc(4, 100, 3, {"max_num_retry": 1, "max_num_instances": 2})
        cache = core.JobCache()
        cache.insert(
            1,
            1,
            core.Submission(
                core.compress(json.dumps(doc).encode()),
                core.compress(core.wire_encode([bin_value(b"x")] * 100)),
            ),
        )
        cache.start(1)
        d = Driver(cache, 1, fail_first=True)
        state = d.run(4, cancel_after_s=delay)
        assert state in (core.JOB_SUCCEEDED, core.JOB_CANCELLED)
        if state == core.JOB_SUCCEEDED:
            assert (d.commit_runs, d.cleanup_runs) == (1, 0)
        else:
            assert (d.commit_runs, d.cleanup_runs) == (0, 1)
        assert cache.live_instances() == 0


def test_concurrent_pollers_see_every_entry_exactly_once() -> None:
    cache = core.JobCache(task_capacity=16)
    n_jobs, per_job = 20, 200
    doc = graph([task("inc", 1, 1, None) for _ in range(per_job)])
    sub = submission(doc, [b"v"] * per_job)
    for j in range(1, n_jobs + 1):
        cache.insert(j, j % 3, sub)
    seen: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def poller() -> None:
        while not stop.is_set():
            got = cache.poll(core.LANE_TASK, 7, 2)
            with lock:
                seen.extend(got)

    threads = [threading.Thread(target=poller) for _ in range(4)]
    for t in threads:
        t.start()
    starters = [threading.Thread(target=cache.start, args=(j,)) for j in range(1, n_jobs + 1)]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        with lock:
            if len(seen) >= n_jobs * per_job:
                break
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(TIMEOUT_S)
    assert len(seen) == n_jobs * per_job
    assert len(set(seen)) == n_jobs * per_job
    assert cache.queue_depths() == (0, 0, 0)


@pytest.mark.parametrize("call", ["poll", "poll_all"])
def test_a_waiting_poll_releases_the_gil(call: str) -> None:
    """A poll that waits does so without the GIL: while it waits, this thread runs Python and
    hands it the work it waits for. With the GIL held, this thread could not run until the
    30 s wait ran out, and the poll would return empty."""
    cache = core.JobCache()
    returned: list[object] = []
    about_to_poll = threading.Event()

    def poller() -> None:
        about_to_poll.set()
        if call == "poll":
            returned.append(cache.poll(core.LANE_TASK, 1, 30_000))
        else:
            returned.append(cache.poll_all(1, 1, 1, 30_000)[0])

    thread = threading.Thread(target=poller, daemon=True)
    thread.start()
    about_to_poll.wait(TIMEOUT_S)
    total = sum(i * i for i in range(200_000))  # Python work while the poll waits
    assert total > 0 and thread.is_alive() and returned == []
    cache.insert(1, 4, submission(graph([task("inc", 1, 1, None)]), [b"v"]))
    cache.start(1)
    thread.join(TIMEOUT_S)
    assert returned == [[(4, 1, 0)]]
