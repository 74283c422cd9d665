"""The operator's view of the execution managers (what `GetClusterStatus` and the dashboard show)
stays whole across a storage restart: the EMs do not register again, their heartbeats say how
many executors they have."""

from __future__ import annotations

import time

import grpc

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import TOKEN_METADATA_KEY


def _executors(cluster: ow.LocalCluster) -> dict[int, int]:
    """Each live execution manager's executor count, as the storage reports it."""
    with grpc.insecure_channel(cluster.address) as channel:
        reply = pb_grpc.ClusterInspectionServiceStub(channel).GetClusterStatus(
            pb.ClusterStatusRequest(),
            metadata=[(TOKEN_METADATA_KEY, f"Bearer {cluster.operator_token}")],
            timeout=30,
        )
    return {em.execution_manager_id: em.executors for em in reply.execution_managers}


def _eventually(cluster: ow.LocalCluster, want: int, timeout: float = 60.0) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = _executors(cluster)
        except grpc.RpcError:
            seen = {}  # the storage is still starting
        if seen and all(count == want for count in seen.values()):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"executor counts {seen}, every EM should show {want}")
        time.sleep(0.2)


def test_a_restarted_storage_learns_each_managers_executors_from_its_heartbeats(
    sqlite_cluster: ow.LocalCluster,
) -> None:
    cluster = sqlite_cluster
    before = _eventually(cluster, want=2)  # the fixture's worker runs 2 executors
    cluster.kill("storage")
    cluster.restart("storage")
    # The same EM (no new registration), known again with its executors.
    after = _eventually(cluster, want=2)
    assert set(after) == set(before)
