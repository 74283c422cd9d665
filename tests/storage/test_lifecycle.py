"""Storage process lifecycle: cache eviction with DB fallback, deletion of expired jobs, metrics,
authentication, size limits, clean shutdown and failed start-up."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import msgpack
import pytest

from orbweaver import _core
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver.states import JobState
from orbweaver.storage.config import StorageConfig
from orbweaver.storage.runtime import StorageRuntime
from support import graphs
from support.driver import Driver
from support.graphs import decode_job_outputs, outputs_frame
from support.procs import StorageProcess, wait_until

SHORT_RETENTION = """
[storage]
instance_gc_interval = 0.2
job_cache_gc_interval = 0.2
job_cache_retention = 0.5
job_retention = 3.0
db_gc_interval = 0.3
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_single(d: Driver, job: int, value: int) -> None:
    assert len(d.poll()) == 1
    ctx = d.register(job, 0)
    d.succeed(job, 0, ctx.task_instance_id, outputs_frame(value))


def live(d: Driver, job: int) -> bool:
    return bool(d.progress(job).live)


@pytest.fixture
def short(db_url: str, tmp_path: Path) -> Driver:
    proc = StorageProcess(db_url, tmp_path, config=SHORT_RETENTION)
    proc.start()
    yield Driver(proc).setup()
    proc.close()
    proc.terminate()


def test_evicted_jobs_are_served_from_the_database(short: Driver) -> None:
    d = short
    done = d.submit(graphs.single(), 1, start=True)
    run_single(d, done, 5)
    failed = d.submit(graphs.single(), 1, start=True)
    ctx = d.register(failed, 0)
    d.fail(failed, 0, ctx.task_instance_id, "KeyError: 'x'")
    cancelled = d.submit(graphs.single(), 1, start=True)
    assert d.cancel(cancelled) == JobState.CANCELLED
    for job in (done, failed, cancelled):
        wait_until(lambda j=job: not live(d, j), timeout=20, what=f"eviction of job {job}")
    assert d.state(done) == JobState.SUCCEEDED
    assert decode_job_outputs(d.outputs(done)) == [5]
    assert "KeyError" in d.error(failed)
    assert d.cancel(cancelled) == JobState.CANCELLED
    for call, args in (
        (d.cancel, (done,)),
        (d.start, (done,)),
        (d.register, (done, 0)),
        (d.fail, (failed, 0, ctx.task_instance_id, "a late retry of the report")),
        (d.outputs, (failed,)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(*args)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, call
    assert d.storage.serving()


def test_expired_jobs_are_deleted(short: Driver) -> None:
    d = short
    job = d.submit(graphs.single(), 1, start=True)
    run_single(d, job, 5)
    running = d.submit(graphs.single(), 1, start=True)

    def gone() -> bool:
        try:
            d.state(job)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    wait_until(gone, timeout=30, what="deletion of the expired job")
    assert d.state(running) == JobState.RUNNING  # unfinished jobs are never deleted


def test_metrics_endpoint(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    proc = StorageProcess(sqlite_url, tmp_path, extra=["--metrics-port", str(port)])
    proc.start()
    try:
        d = Driver(proc).setup()
        d.submit(graphs.flat(3), 1, 2, 3, start=True)
        proc.restart()
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        metrics = text.decode()
        assert 'orbweaver_storage_queue_depth{lane="task"} 3.0' in metrics
        assert 'orbweaver_storage_jobs{state="RUNNING"} 1.0' in metrics
        assert 'orbweaver_storage_jobs_recovered{state="RUNNING"} 1.0' in metrics
        assert "orbweaver_storage_recovery_seconds" in metrics
        # Transitions are counted as they happen.
        d.setup()  # an EM of the new session
        [entry, *_] = d.poll(max_items=1)
        ctx = d.register(entry.job_id, entry.task_id.index)
        d.succeed(entry.job_id, entry.task_id.index, ctx.task_instance_id, outputs_frame(1))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        metrics = text.decode()
        assert "orbweaver_storage_task_instances_registered_total 1.0" in metrics
        assert "orbweaver_storage_task_successes_total 1.0" in metrics
        assert 'orbweaver_storage_queue_depth{lane="task"} 2.0' in metrics
    finally:
        proc.close()
        proc.terminate()


def test_stopping_the_runtime_closes_the_metrics_endpoint(sqlite_url: str) -> None:
    port = free_port()
    runtime = StorageRuntime(
        StorageConfig(db_url=sqlite_url, listen="127.0.0.1:0", metrics_port=port)
    )
    runtime.start()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        assert b"orbweaver_storage_recovery_seconds" in text
    finally:
        runtime.stop()
    with socket.socket() as again:
        # Free again: nothing of the stopped component listens (REUSEADDR: only the closed
        # connections' TIME_WAIT may remain, and a listener would still make this fail).
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("0.0.0.0", port))
        again.listen()


def test_token_is_required_when_configured(sqlite_url: str, tmp_path: Path) -> None:
    proc = StorageProcess(sqlite_url, tmp_path, env={"ORBWEAVER_TOKEN": "t0ken"})
    proc.start()
    try:
        assert proc.serving()  # health checks need no token
        with pytest.raises(grpc.RpcError) as info:
            proc.stubs().session.GetSession(pb.Void(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel = grpc.intercept_channel(grpc.insecure_channel(proc.address), _Bearer("t0ken"))
        from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc

        reply = pb_grpc.SessionManagementServiceStub(channel).GetSession(pb.Void(), timeout=10)
        assert reply.session_id > 0
        channel.close()
    finally:
        proc.close()
        proc.terminate()


class _Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.token}")]
        return continuation(details._replace(metadata=metadata), request)


def test_wait_jobs_leaves_results_beyond_the_message_budget_out(
    sqlite_url: str, tmp_path: Path
) -> None:
    """WaitJobs carries outputs up to half the message limit; the rest are marked omitted (the
    client fetches those one by one) instead of failing the whole reply."""
    config = "[storage]\nmax_message_bytes = 1048576\nmax_input_bytes = 524288\n"
    proc = StorageProcess(sqlite_url, tmp_path, config=config)
    proc.start()
    try:
        d = Driver(proc).setup()
        jobs = [d.submit(graphs.single(), n, start=True) for n in range(3)]
        for entry in d.poll():
            ctx = d.register(entry.job_id, entry.task_id.index)
            big = msgpack.packb(os.urandom(300_000))  # incompressible: 300 kB stored each
            d.succeed(entry.job_id, 0, ctx.task_instance_id, _core.wire_encode([big]))
        request = pb.WaitJobsRequest(job_ids=jobs, timeout_ms=10_000, include_result=True)
        reply = d.s.jobs.WaitJobs(request, timeout=30)
        assert all(j.state == JobState.SUCCEEDED for j in reply.jobs)
        assert [j.result_omitted for j in reply.jobs] == [False, True, True]
        assert reply.jobs[0].serialized_outputs and not reply.jobs[2].serialized_outputs
    finally:
        proc.close()
        proc.terminate()


def test_oversized_messages_get_a_clear_status(sqlite_url: str, tmp_path: Path) -> None:
    config = "[storage]\nmax_message_bytes = 1048576\nmax_input_bytes = 524288\n"
    proc = StorageProcess(sqlite_url, tmp_path, config=config)
    proc.start()
    try:
        d = Driver(proc).setup()
        big = _core.compress(os.urandom(2 * 1024 * 1024))
        request = pb.RegisterJobRequest(
            resource_group_id=d.rg,
            password=b"s3cret",
            compressed_serialized_task_graph=big,
            compressed_serialized_inputs=b"",
        )
        with pytest.raises(grpc.RpcError) as info:
            d.s.jobs.RegisterJob(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert proc.serving()
    finally:
        proc.close()
        proc.terminate()


def test_sigterm_stops_cleanly_with_json_logs(sqlite_url: str, tmp_path: Path) -> None:
    proc = StorageProcess(sqlite_url, tmp_path)
    proc.start()
    Driver(proc).setup()
    proc.close()
    assert proc.terminate(timeout=30) == 0
    lines = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "storage serving" for entry in lines)
    assert any(entry["msg"] == "storage stopped" for entry in lines)
    assert all({"ts", "level", "component", "msg"} <= entry.keys() for entry in lines)


def run_storage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbweaver", "storage", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "python")},
    )


def test_start_up_failure_is_reported(tmp_path: Path) -> None:
    result = run_storage("--db", "postgres://nope")
    assert result.returncode != 0
    assert "postgres" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("task_capacity = 0", "task_capacity must be > 0"),
        ("recovery_page_size = -5", "recovery_page_size must be > 0"),
        ("em_stale_cutoff = 0.0", "em_stale_cutoff must be > 0 seconds"),
        ("job_cache_retention = -1.0", "job_cache_retention from [storage] job_cache_retention in"),
        ("job_cache_retention = 0", "job_cache_retention must be > 0 seconds"),
        ("job_retention = 0.0", "job_retention must be > 0 seconds (or unset)"),
        ("max_wait = 0", "max_wait must be > 0 seconds"),
        ("max_tasks = 0", "max_tasks must be > 0"),
        ("visibility_timeout = 0", "visibility_timeout must be > 0 seconds"),
        (
            "max_message_bytes = 1048576",
            "max_input_bytes (33554432) must leave room in max_message_bytes (1048576)",
        ),
    ],
)
def test_a_zero_or_negative_setting_is_refused_at_start(
    setting: str, message: str, sqlite_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "storage.toml"
    config.write_text(f"[storage]\n{setting}\n")
    result = run_storage("--db", sqlite_url, "--config", str(config))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_cancelled_wait_gives_its_long_wait_back(sqlite_url: str, tmp_path: Path) -> None:
    """Two handler threads allow one long wait. A caller that cancels its long wait frees it at
    once (its thread no longer waits out the 600 s it asked for), so the next caller's wait is a
    long one again and sees the job end (a short one would return after 0.2 s, RUNNING)."""
    proc = StorageProcess(sqlite_url, tmp_path, config="[storage]\ngrpc_workers = 2\n")
    proc.start()
    try:
        d = Driver(proc).setup()
        job = d.submit(graphs.single(), 5, start=True)
        request = pb.WaitJobRequest(job_id=job, timeout_ms=600_000, include_result=True)
        first = d.s.jobs.WaitJob.future(request, timeout=900)
        time.sleep(0.5)  # the first wait holds the long-wait slot
        first.cancel()
        time.sleep(0.5)
        replies: list[pb.WaitJobReply] = []
        second = threading.Thread(
            target=lambda: replies.append(d.s.jobs.WaitJob(request, timeout=60))
        )
        second.start()
        time.sleep(1.0)  # well past a short wait's 0.2 s
        [entry] = d.poll()
        ctx = d.register(job, entry.task_id.index)
        d.succeed(job, 0, ctx.task_instance_id, outputs_frame(6))
        second.join(60)
        assert [r.state for r in replies] == [JobState.SUCCEEDED]
    finally:
        proc.close()
        proc.terminate()
