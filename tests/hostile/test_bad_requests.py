"""Malformed requests get INVALID_ARGUMENT (or another precise status) naming what was wrong;
INTERNAL is reserved for broken invariants, and the service keeps serving."""

from __future__ import annotations

import grpc
import pytest

from orbweaver._proto import orbweaver_pb2 as pb
from support.driver import PASSWORD, Driver

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _details(fn, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn(request, timeout=30)
    return info.value.code(), info.value.details() or ""


def test_verify_resource_group_with_both_id_and_name(driver: Driver) -> None:
    request = pb.VerifyResourceGroupRequest(
        resource_group_id=driver.rg, external_resource_group_id="tests", password=PASSWORD
    )
    code, details = _details(driver.s.groups.VerifyResourceGroup, request)
    assert code == INVALID and "not both" in details


@pytest.mark.parametrize("state", [0, 8, 99])
def test_list_jobs_with_an_unknown_state(driver: Driver, state: int) -> None:
    code, details = _details(driver.s.jobs.ListJobs, pb.ListJobsRequest(states=[state]))
    assert code == INVALID and f"unknown job state {state}" in details


def test_em_address_longer_than_the_column(driver: Driver) -> None:
    scoped = "fe80::1%" + "x" * 60  # a valid scoped IPv6 address, 68 characters
    request = pb.RegisterExecutionManagerRequest(ip_address=scoped)
    code, details = _details(driver.s.liveness.RegisterExecutionManager, request)
    assert code == INVALID and "at most 45" in details


@pytest.mark.parametrize(
    ("host", "expected"),
    [("h" * 256, "at most 255"), ("bad host;--", "neither a host name"), ("", "empty")],
)
def test_scheduler_host_is_checked(driver: Driver, host: str, expected: str) -> None:
    request = pb.RegisterSchedulerRequest(host=host, port=1)
    code, details = _details(driver.s.schedulers.RegisterScheduler, request)
    assert code == INVALID and expected in details


@pytest.mark.parametrize(
    "method",
    [
        "/orbweaver.v1.JobOrchestrationService/RegisterJob",
        "/orbweaver.v1.JobOrchestrationService/GetJobState",
        "/orbweaver.v1.TaskInstanceManagementService/ReportTaskOutcomes",
        "/orbweaver.v1.InboundQueueService/PollAll",
        "/orbweaver.v1.ResourceGroupManagementService/AddResourceGroup",
    ],
)
def test_undecodable_request_bytes(driver: Driver, method: str) -> None:
    call = driver.storage.channel().unary_unary(method)
    garbage = b"\xff\xff\xff\xff\xff\x0f\x0a\x80"  # a truncated varint field
    with pytest.raises(grpc.RpcError) as info:
        call(garbage, timeout=30)
    assert info.value.code() == INVALID, info.value.details()
    assert "not a valid orbweaver.v1." in (info.value.details() or "")
    assert driver.storage.serving()


def test_poll_needs_the_registered_scheduler(driver: Driver) -> None:
    code, details = _details(driver.s.queue.PollAll, pb.PollAllRequest(max_tasks=10))
    assert code == INVALID and "scheduler_id" in details
    stranger = pb.PollAllRequest(max_tasks=10, scheduler_id=driver.scheduler + 1000)
    code, details = _details(driver.s.queue.PollAll, stranger)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "registered scheduler" in details
    lane = pb.PollRequest(max_items=10, scheduler_id=driver.scheduler + 1000)
    code, _ = _details(driver.s.queue.PollReadyTasks, lane)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
