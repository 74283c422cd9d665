"""`ClusterInspectionService` (the dashboard's reads) under the roles of the job services, over
raw gRPC against a real storage process: a group sees its own jobs' graphs and counts only (a
foreign job looks missing), the cluster-wide figures are the operator's, and neither anonymous
callers nor the cluster token get anything."""

from __future__ import annotations

import grpc
import pytest
from test_access import (  # the fixtures and helpers of the tenant-isolation tests
    NOT_FOUND,
    OPERATOR,
    TOKEN,
    UNAUTHENTICATED,
    Tenant,
    _bearer,
    _code,
    secured,
    tenants,
)

from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from support import graphs
from support.driver import group_metadata
from support.graphs import compressed
from support.procs import StorageProcess

__all__ = ["secured", "tenants"]  # fixtures used by name


def _counts(reply: pb.ClusterStatusReply) -> dict[int, int]:
    return {int(c.state): int(c.count) for c in reply.jobs if c.count}


def test_a_group_sees_its_own_graph_and_counts_only(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = tenants
    inspect = pb_grpc.ClusterInspectionServiceStub(secured.channel())
    creds = group_metadata(alpha.id, alpha.password)
    graph = inspect.GetJobGraph(pb.JobIdRequest(job_id=alpha.job), metadata=creds, timeout=30)
    assert graph.job.job_id == alpha.job and graph.job.resource_group_id == alpha.id
    assert graph.compressed_serialized_task_graph == compressed(graphs.single())
    assert [(t.task_id.index, t.state) for t in graph.tasks] == [(0, "pending")]
    # Another group's job and a missing one: the same answer.
    foreign = pb.JobIdRequest(job_id=beta.job)
    assert _code(inspect.GetJobGraph, foreign, metadata=creds) == NOT_FOUND
    missing = pb.JobIdRequest(job_id=10**9)
    assert _code(inspect.GetJobGraph, missing, metadata=creds) == NOT_FOUND
    status = inspect.GetClusterStatus(pb.ClusterStatusRequest(), metadata=creds, timeout=30)
    assert not status.cluster_wide
    assert _counts(status) == {pb.JOB_STATE_READY: 1}
    assert list(status.execution_managers) == [] and status.session_id == 0


def test_the_operator_sees_the_cluster(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = tenants
    inspect = pb_grpc.ClusterInspectionServiceStub(secured.channel())
    status = inspect.GetClusterStatus(
        pb.ClusterStatusRequest(), metadata=_bearer(OPERATOR), timeout=30
    )
    assert status.cluster_wide and status.session_id > 0
    assert _counts(status) == {pb.JOB_STATE_READY: 2}
    assert status.HasField("recovery")
    for job in (alpha.job, beta.job):
        reply = inspect.GetJobGraph(
            pb.JobIdRequest(job_id=job), metadata=_bearer(OPERATOR), timeout=30
        )
        assert reply.job.job_id == job


@pytest.mark.parametrize("who", ["anonymous", "wrong password", "cluster token"])
def test_no_inspection_without_client_credentials(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant], who: str
) -> None:
    alpha, _ = tenants
    metadata: list[tuple[str, str | bytes]] = []
    expected = UNAUTHENTICATED
    if who == "wrong password":
        metadata = list(group_metadata(alpha.id, b"guess"))
    elif who == "cluster token":
        metadata, expected = list(_bearer(TOKEN)), grpc.StatusCode.PERMISSION_DENIED
    inspect = pb_grpc.ClusterInspectionServiceStub(secured.channel())
    request = pb.JobIdRequest(job_id=alpha.job)
    assert _code(inspect.GetJobGraph, request, metadata=metadata) == expected
    assert _code(inspect.GetClusterStatus, pb.ClusterStatusRequest(), metadata=metadata) == (
        expected
    )
