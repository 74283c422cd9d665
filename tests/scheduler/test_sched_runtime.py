"""The scheduler runtime end to end against a fake storage service (a gRPC peer in the test)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sched_helpers import FakeStorage, free_port, ready, ready_cleanup, ready_commit, wait_until

from orbweaver import _rpc, errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver.scheduler import SchedulerConfig, SchedulerRuntime, main

pytestmark = pytest.mark.timeout(120)


def config(storage: str, **overrides: object) -> SchedulerConfig:
    values: dict[str, object] = {
        "storage": storage,
        "listen": "127.0.0.1:0",
        "retry_backoff_base": 0.01,
        "retry_backoff_cap": 0.1,
        "storage_rpc_timeout": 2.0,
        "stop_timeout": 10.0,
    }
    values.update(overrides)
    return SchedulerConfig(**values)  # type: ignore[arg-type]


def scheduler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("orbweaver-scheduler")]


class Em:
    """A minimal execution manager: batch NextTasks with acks, heartbeats, shutdown."""

    def __init__(self, runtime: SchedulerRuntime, em_id: int) -> None:
        self.em_id = em_id
        self.channel = _rpc.make_channel(runtime.address)
        self.stub = pb_grpc.SchedulerServiceStub(self.channel)
        self.acks: list[pb.TaskAssignmentRecord] = []

    def next(self, max_items: int = 8, wait_ms: int = 100) -> list[pb.TaskAssignment]:
        reply = self.stub.NextTasks(
            pb.NextTasksRequest(
                execution_manager_id=self.em_id,
                acks=self.acks,
                max_items=max_items,
                wait_time_ms=wait_ms,
            ),
            timeout=30,
        )
        self.acks = [
            pb.TaskAssignmentRecord(assignment_id=a.assignment_id, scheduler_id=a.scheduler_id)
            for a in reply.assignments
        ]
        return list(reply.assignments)

    def collect(self, n: int, timeout: float = 20.0) -> list[pb.TaskAssignment]:
        got: list[pb.TaskAssignment] = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            if time.monotonic() > deadline:
                pytest.fail(f"EM {self.em_id} received {len(got)} of {n} assignments")
            got.extend(self.next())
        return got

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def runtime(fake_storage: FakeStorage) -> Iterator[SchedulerRuntime]:
    rt = SchedulerRuntime(config(fake_storage.address))
    rt.start()
    try:
        yield rt
    finally:
        rt.stop(grace=0.5)


def key(a: pb.TaskAssignment) -> tuple[int, str, int]:
    kind = a.task_id.WhichOneof("kind") or ""
    return (a.job_id, kind, a.task_id.index)


# ---------------------------------------------------------------------------------------------


def test_registers_with_storage_and_serves_health(
    fake_storage: FakeStorage, runtime: SchedulerRuntime
) -> None:
    assert fake_storage.registrations == [("127.0.0.1", runtime.port)]
    assert runtime.scheduler_id == 7
    channel = _rpc.make_channel(runtime.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
    assert runtime.running and runtime.exit_code == 0


def test_advertised_endpoint_is_registered(fake_storage: FakeStorage) -> None:
    rt = SchedulerRuntime(
        config(fake_storage.address, advertised_host="sched.example", advertised_port=6000)
    )
    rt.start()
    try:
        assert fake_storage.registrations == [("sched.example", 6000)]
    finally:
        rt.stop(grace=0)


def test_registration_is_retried_until_storage_is_up() -> None:
    port = free_port()
    storage = FakeStorage()
    rt = SchedulerRuntime(config(f"127.0.0.1:{port}"))
    outcome: list[BaseException | None] = []
    starter = threading.Thread(target=lambda: outcome.append(_capture(rt.start)))
    starter.start()
    try:
        time.sleep(0.5)
        assert starter.is_alive() and not outcome  # still retrying
        storage.start(port)
        starter.join(30)
        assert outcome == [None]
        assert len(storage.registrations) == 1
        em = Em(rt, 1)
        storage.push("tasks", ready(1, 1, 0))
        assert [key(a) for a in em.collect(1)] == [(1, "index", 0)]
        em.close()
    finally:
        rt.stop(grace=0)
        storage.stop()


def _capture(fn: object) -> BaseException | None:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:
        return exc
    return None


def test_stop_aborts_a_pending_registration_and_cleans_up() -> None:
    rt = SchedulerRuntime(config(f"127.0.0.1:{free_port()}"))
    outcome: list[BaseException | None] = []
    starter = threading.Thread(target=lambda: outcome.append(_capture(rt.start)))
    starter.start()
    time.sleep(0.3)
    rt.stop(grace=0)
    starter.join(15)
    assert not starter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], errors.Unavailable)
    assert rt.wait(5)
    assert scheduler_threads() == []


def test_ready_tasks_flow_through_to_an_em(
    fake_storage: FakeStorage, runtime: SchedulerRuntime
) -> None:
    entries = [ready(rg, job, i) for i in range(10) for rg, job in ((1, 100), (1, 101), (2, 200))]
    fake_storage.push("tasks", *entries)
    fake_storage.push("commit", ready_commit(3, 300))
    fake_storage.push("cleanup", ready_cleanup(3, 301))
    em = Em(runtime, 1)
    try:
        got = em.collect(32)
        assert len({a.assignment_id for a in got}) == 32
        assert {key(a) for a in got} == (
            {(job, "index", i) for i in range(10) for job in (100, 101, 200)}
            | {(300, "commit", 0), (301, "cleanup", 0)}
        )
        assert {(a.scheduler_id, a.session_id) for a in got} == {(7, 1)}
        wait_until(lambda: runtime.registry.outstanding(1) != [], what="outstanding recorded")
        em.next(wait_ms=0)  # acks everything
        assert runtime.registry.outstanding(1) == []
    finally:
        em.close()


def test_poll_errors_do_not_kill_the_runtime(
    fake_storage: FakeStorage, runtime: SchedulerRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    codes = [grpc.StatusCode.UNAVAILABLE] * 4 + [grpc.StatusCode.INTERNAL] * 4
    codes += [grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED]
    em = Em(runtime, 1)
    try:
        with caplog.at_level(logging.WARNING, logger="orbweaver.scheduler"):
            fake_storage.fail_polls(*codes)
            wait_until(lambda: fake_storage.failed_polls == len(codes), what="failed polls")
            fake_storage.push("tasks", *[ready(1, 5, i) for i in range(5)])
            got = em.collect(5)
        assert sorted(a.task_id.index for a in got) == list(range(5))
        errors_seen = runtime.metrics.registry.get_sample_value(
            "orbweaver_scheduler_storage_poll_errors_total"
        )
        assert errors_seen is not None and errors_seen >= len(codes)
        warnings = [r for r in caplog.records if "storage poll failed" in r.getMessage()]
        assert warnings and any("INTERNAL" in str(getattr(r, "code", "")) for r in warnings)
        assert runtime.running
        assert [t.name for t in scheduler_threads()].count("orbweaver-scheduler-core") == 1
    finally:
        em.close()


def test_an_unexpected_error_in_the_core_loop_is_logged_and_retried(
    fake_storage: FakeStorage,
    runtime: SchedulerRuntime,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in one pass of the core loop (here: placement raising) is logged with its
    traceback and retried; nothing buffered is lost and the scheduler keeps serving."""
    decide = runtime._core.decide
    bugs = [RuntimeError("injected placement bug")] * 2

    def buggy_decide(free_slots: int) -> list[Any]:
        if bugs:
            raise bugs.pop()
        return decide(free_slots)

    em = Em(runtime, 1)
    try:
        with caplog.at_level(logging.ERROR, logger="orbweaver.scheduler"):
            monkeypatch.setattr(runtime._core, "decide", buggy_decide)
            fake_storage.push("tasks", *[ready(1, 5, i) for i in range(5)])
            got = em.collect(5)
        assert sorted(a.task_id.index for a in got) == list(range(5))
        assert not bugs
        failures = [r for r in caplog.records if "core loop iteration failed" in r.getMessage()]
        assert len(failures) == 2
        assert all("injected placement bug" in str(getattr(r, "error", "")) for r in failures)
        assert all(r.exc_info is not None for r in failures), "no traceback logged"
        assert runtime.running
    finally:
        em.close()


def test_malformed_inbound_entries_are_skipped(
    fake_storage: FakeStorage, runtime: SchedulerRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    em = Em(runtime, 1)
    try:
        with caplog.at_level(logging.WARNING, logger="orbweaver.scheduler"):
            fake_storage.push(
                "tasks",
                pb.ReadyTask(resource_group_id=1, job_id=7),  # no task id
                pb.ReadyTask(resource_group_id=1, job_id=7, task_id=pb.TaskId(index=2**40)),
                ready_commit(1, 8),  # a commit entry on the task lane
                ready(1, 9, 0),
            )
            [only] = em.collect(1)
        assert (only.job_id, only.task_id.index) == (9, 0)
        skipped = [r for r in caplog.records if "malformed inbound entry" in r.getMessage()]
        assert len(skipped) == 3
        assert runtime.running
    finally:
        em.close()


def test_session_bump_drains_old_assignments_and_new_ones_carry_new_session(
    fake_storage: FakeStorage,
) -> None:
    rt = SchedulerRuntime(config(fake_storage.address, dispatch_queue_capacity=4))
    rt.start()
    em = Em(rt, 1)
    try:
        fake_storage.push("tasks", *[ready(1, 1, i) for i in range(10)])
        wait_until(lambda: len(rt.dispatch_queue) == 4, what="dispatch queue to fill")
        held = em.next(max_items=1)
        assert [a.session_id for a in held] == [1]
        # Storage restarted: new session, new work.
        fake_storage.push("tasks", *[ready(2, 2, i) for i in range(3)], session_id=2)
        wait_until(lambda: rt.session_id == 2, what="the session bump")
        em.acks = []  # keep the old-session assignment outstanding
        got = em.collect(3)
        assert sorted(key(a) for a in got) == [(2, "index", i) for i in range(3)]
        assert {a.session_id for a in got} == {2}
        # The old-session assignment comes back when the EM leaves, and is dropped as stale.
        acks = [
            pb.TaskAssignmentRecord(assignment_id=a.assignment_id, scheduler_id=a.scheduler_id)
            for a in got
        ]
        em.stub.Shutdown(
            pb.ShutdownRequest(execution_manager_id=1, prev_assignments=acks), timeout=10
        )
        other = Em(rt, 2)
        try:
            wait_until(lambda: rt.registry.pending_reschedules() == 0, what="the reschedule")
            assert other.next(wait_ms=200) == []
        finally:
            other.close()
    finally:
        em.close()
        rt.stop(grace=0)


def test_assignments_of_a_dead_em_are_redelivered(fake_storage: FakeStorage) -> None:
    rt = SchedulerRuntime(
        config(fake_storage.address, dead_em_cutoff=0.3, liveness_tracking_interval=0.05)
    )
    rt.start()
    silent, survivor = Em(rt, 1), Em(rt, 2)
    try:
        fake_storage.push("tasks", ready(1, 9, 0))
        lost = silent.collect(1)
        # EM 1 goes silent; EM 2 keeps polling (which also keeps it alive).
        again = survivor.collect(1)
        assert key(again[0]) == key(lost[0])
        assert again[0].assignment_id != lost[0].assignment_id
        assert 1 not in rt.registry
        rescheduled = rt.metrics.registry.get_sample_value(
            "orbweaver_scheduler_assignments_rescheduled_total"
        )
        assert rescheduled == 1
    finally:
        silent.close()
        survivor.close()
        rt.stop(grace=0)


def test_stop_is_prompt_and_leaves_no_threads(fake_storage: FakeStorage) -> None:
    baseline = {t.ident for t in threading.enumerate()}
    rt = SchedulerRuntime(config(fake_storage.address, metrics_port=0))
    rt.start()
    em = Em(rt, 1)
    poll_result: list[BaseException | None] = []

    def long_poll() -> None:
        poll_result.append(_capture(lambda: em.next(wait_ms=20_000)))

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.2)  # the long poll is parked in the dispatch queue
    started = time.monotonic()
    rt.stop(grace=1.0)
    elapsed = time.monotonic() - started
    poller.join(15)
    em.close()
    assert not poller.is_alive()
    assert elapsed < 15  # generous liveness bound; the long poll alone would take 20 s
    assert rt.wait(0)
    fake_storage.stop()  # its gRPC threads were born after the baseline too

    def leftovers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.ident not in baseline]

    wait_until(lambda: not leftovers(), what="every runtime thread to exit: " + str(leftovers()))
    rt.stop()  # idempotent


def test_stop_is_prompt_while_storage_hangs(fake_storage: FakeStorage) -> None:
    rt = SchedulerRuntime(config(fake_storage.address, storage_rpc_timeout=60.0))
    rt.start()
    fake_storage.hang.set()
    entered = fake_storage.entered
    wait_until(lambda: fake_storage.entered > entered, what="a poll to hang in storage")
    started = time.monotonic()
    rt.stop(grace=0)
    assert time.monotonic() - started < 10  # the hung poll alone would take 30 s
    assert scheduler_threads() == []


def test_metrics_endpoint_exports_scheduler_metrics(fake_storage: FakeStorage) -> None:
    rt = SchedulerRuntime(config(fake_storage.address, metrics_port=0))
    rt.start()
    em = Em(rt, 1)
    try:
        fake_storage.push("tasks", ready(1, 1, 0), ready(1, 1, 1))
        em.collect(2)
        assert rt.metrics_port is not None
        url = f"http://127.0.0.1:{rt.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for name in (
            "orbweaver_scheduler_buffered_tasks",
            "orbweaver_scheduler_dispatch_queue_depth",
            "orbweaver_scheduler_assignments_dispatched_total 2.0",
            "orbweaver_scheduler_assignments_rescheduled_total",
            "orbweaver_scheduler_known_execution_managers 1.0",
            "orbweaver_scheduler_session_id 1.0",
        ):
            assert name in text
    finally:
        em.close()
        rt.stop(grace=0)


def test_cluster_token_is_used_and_required() -> None:
    security = _rpc.Security(token="s3cret")
    storage = FakeStorage()
    storage.start(security=security)
    try:
        # Without the token storage rejects the registration: no endless retry, a clear error.
        bare = SchedulerRuntime(config(storage.address))
        with pytest.raises(errors.Unauthenticated):
            bare.start()
        assert bare.wait(5) and scheduler_threads() == []
        rt = SchedulerRuntime(config(storage.address, security=security))
        rt.start()
        try:
            anonymous = Em(rt, 1)
            with pytest.raises(grpc.RpcError) as info:
                anonymous.next(wait_ms=0)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            anonymous.close()
            channel = _rpc.make_channel(rt.address, security)
            stub = pb_grpc.SchedulerServiceStub(channel)
            storage.push("tasks", ready(1, 1, 0))
            deadline = time.monotonic() + 20
            got: list[pb.TaskAssignment] = []
            while not got and time.monotonic() < deadline:
                got = list(
                    stub.NextTasks(
                        pb.NextTasksRequest(execution_manager_id=1, wait_time_ms=100), timeout=10
                    ).assignments
                )
            channel.close()
            assert [key(a) for a in got] == [(1, "index", 0)]
        finally:
            rt.stop(grace=0)
    finally:
        storage.stop()


def test_two_runtimes_in_one_process(fake_storage: FakeStorage) -> None:
    first = SchedulerRuntime(config(fake_storage.address))
    second = SchedulerRuntime(config(fake_storage.address))
    first.start()
    second.start()
    try:
        assert first.scheduler_id != second.scheduler_id and first.port != second.port
    finally:
        first.stop(grace=0)
        second.stop(grace=0)


def test_runtime_starts_once(fake_storage: FakeStorage, runtime: SchedulerRuntime) -> None:
    with pytest.raises(RuntimeError):
        runtime.start()


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(errors.InvalidArgument, match="policy"):
        SchedulerConfig(policy="random")
    with pytest.raises(errors.InvalidArgument, match="dispatch_queue_capacity"):
        SchedulerConfig(dispatch_queue_capacity=0)
    with pytest.raises(errors.InvalidArgument, match="storage"):
        SchedulerConfig(storage="nohostport")
    assert SchedulerConfig(policy="job_round_robin").core_config().policy == "job_round_robin"


def test_main_shuts_down_cleanly_on_sigterm(fake_storage: FakeStorage) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def kill_when_registered() -> None:
        deadline = time.monotonic() + 20
        while not fake_storage.registrations and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=kill_when_registered)
    killer.start()
    try:
        code = main(config(fake_storage.address), log_level="WARNING")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        killer.join(30)
    assert code == 0
    assert fake_storage.registrations
    assert scheduler_threads() == []
    assert signal.getsignal(signal.SIGTERM) is previous
