"""Values the database cannot hold: the storage never sends a packet the database refuses (and
never exits over it); a job whose outputs cannot be stored fails with the sizes in its error."""

from __future__ import annotations

import os

import grpc
import msgpack
import pytest

from orbweaver import _core
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._taskid import to_proto
from orbweaver.states import JobState
from support import graphs
from support.driver import PASSWORD, Driver
from support.graphs import compressed, decode_job_outputs

BYTES_TASK = graphs.graph(
    [
        {
            "tdl_context": {"package": "testpkg", "task_func": "blob"},
            "inputs": [graphs.INT],
            "outputs": [graphs.BYTES],
            "input_sources": None,
        }
    ]
)


def _bytes_output(size: int) -> bytes:
    return _core.wire_encode([msgpack.packb(os.urandom(size))])


def _run_to_report(driver: Driver, jobs: list[int]) -> list[tuple[int, int]]:
    """Take each job's single task and register an instance; (job, instance) pairs."""
    taken = []
    while len(taken) < len(jobs):
        taken += driver.poll(max_items=len(jobs))
    out = []
    for entry in taken:
        ctx = driver.register(entry.job_id, 0)
        out.append((entry.job_id, ctx.task_instance_id))
    return sorted(out)


@pytest.mark.mariadb
@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_outputs_above_the_packet_limit_fail_the_job_and_storage_stays_up(
    driver: Driver,
) -> None:
    # MariaDB's default max_allowed_packet is 16 MiB; random bytes do not compress.
    [job] = [driver.submit(BYTES_TASK, 20, start=True)]
    [(job_id, instance)] = _run_to_report(driver, [job])
    driver.succeed(job_id, 0, instance, _bytes_output(20 << 20))
    assert driver.state(job) == JobState.FAILED
    message = driver.error(job)
    assert "above the limit of" in message and "bytes" in message, message
    assert driver.storage.alive and driver.storage.serving()
    # Storage keeps serving: a normal job still runs to the end.
    ok = driver.submit(graphs.single(), 1, start=True)
    [(ok_id, ok_instance)] = _run_to_report(driver, [ok])
    driver.succeed(ok_id, 0, ok_instance, graphs.outputs_frame(2))
    assert driver.state(ok) == JobState.SUCCEEDED
    assert driver.storage.starts == 1, "storage restarted"


@pytest.mark.mariadb
@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_a_report_batch_of_large_outputs_is_stored_in_packets_that_fit(driver: Driver) -> None:
    # Eight 3 MiB outputs completed by one report: 24 MiB in one transaction, above the packet.
    jobs = [driver.submit(BYTES_TASK, i, start=True) for i in range(8)]
    running = _run_to_report(driver, jobs)
    payloads = {job: os.urandom(3 << 20) for job, _ in running}
    reply = driver.s.instances.ReportTaskOutcomes(
        pb.ReportTaskOutcomesRequest(
            execution_manager_id=driver.em,
            session_id=driver.session,
            outcomes=[
                pb.TaskOutcome(
                    job_id=job,
                    task_id=to_proto(0),
                    task_instance_id=instance,
                    serialized_outputs=_core.wire_encode([msgpack.packb(payloads[job])]),
                )
                for job, instance in running
            ],
        ),
        timeout=60,
    )
    assert [s.code for s in reply.statuses] == [0] * 8
    for job in jobs:
        assert driver.state(job) == JobState.SUCCEEDED
        assert decode_job_outputs(driver.outputs(job)) == [payloads[job]]
    assert driver.storage.starts == 1


@pytest.mark.mariadb
@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_a_submission_above_the_packet_limit_is_refused_with_the_sizes(driver: Driver) -> None:
    blob_in = graphs.graph(
        [
            {
                "tdl_context": {"package": "testpkg", "task_func": "blob"},
                "inputs": [graphs.BYTES],
                "outputs": [graphs.BYTES],
                "input_sources": None,
            }
        ]
    )
    request = pb.RegisterJobRequest(
        resource_group_id=driver.rg,
        password=PASSWORD,
        compressed_serialized_task_graph=compressed(blob_in),
        compressed_serialized_inputs=_core.compress(
            _core.wire_encode([msgpack.packb(os.urandom(20 << 20))])
        ),
    )
    with pytest.raises(grpc.RpcError) as info:
        driver.s.jobs.RegisterJob(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds" in info.value.details() and "bytes" in info.value.details()
    assert driver.storage.alive and driver.storage.serving()
