"""The dashboard's only way to the cluster: the storage's gRPC API, with the logged-in user's
credentials on every call (so the storage's own access checks apply)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import msgpack

from orbweaver import _core, _taskid, errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import (
    GROUP_METADATA_KEY,
    PASSWORD_METADATA_KEY,
    TOKEN_METADATA_KEY,
    Security,
    TlsConfig,
    error_from_rpc,
    make_channel,
)
from orbweaver.states import JobState

__all__ = ["Credentials", "StorageReader"]

_TIMEOUT_S = 10.0
# The most of a job's outputs a page shows.
PREVIEW_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Credentials:
    """A logged-in user: the operator (token) or one resource group (id, name and password).
    Never printed: the repr leaves the secrets out."""

    operator_token: str | None = field(default=None, repr=False)
    group_id: int = 0
    group_name: str = ""
    password: bytes = field(default=b"", repr=False)

    @property
    def is_operator(self) -> bool:
        return self.operator_token is not None

    @property
    def who(self) -> str:
        return "operator" if self.is_operator else f"resource group {self.group_name}"

    def metadata(self) -> list[tuple[str, str | bytes]]:
        if self.operator_token is not None:
            return [(TOKEN_METADATA_KEY, f"Bearer {self.operator_token}")]
        return [(GROUP_METADATA_KEY, str(self.group_id)), (PASSWORD_METADATA_KEY, self.password)]


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class StorageReader:
    """Thread-safe: gRPC channels and stubs are."""

    def __init__(self, address: str, tls: TlsConfig | None = None) -> None:
        self.address = address
        # No cluster token: the dashboard is a client like any other.
        self._channel = make_channel(address, Security(tls=tls))
        self._jobs = pb_grpc.JobOrchestrationServiceStub(self._channel)
        self._groups = pb_grpc.ResourceGroupManagementServiceStub(self._channel)
        self._inspect = pb_grpc.ClusterInspectionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    @staticmethod
    def _call(method: Any, request: Any, creds: Credentials | None) -> Any:
        try:
            return method(
                request, timeout=_TIMEOUT_S, metadata=None if creds is None else creds.metadata()
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    # -- login ----------------------------------------------------------------------------------

    def login_operator(self, token: str) -> Credentials:
        creds = Credentials(operator_token=token)
        reply = self._call(self._inspect.GetClusterStatus, pb.ClusterStatusRequest(), creds)
        if not reply.cluster_wide:  # pragma: no cover - a token is the operator's or refused
            raise errors.Unauthenticated("invalid token")
        return creds

    def login_group(self, group: str, password: bytes) -> Credentials:
        request = pb.VerifyResourceGroupRequest(password=password)
        if group.isdigit():
            request.resource_group_id = int(group)
        else:
            request.external_resource_group_id = group
        reply = self._call(self._groups.VerifyResourceGroup, request, None)
        return Credentials(
            group_id=reply.resource_group_id,
            group_name=reply.external_resource_group_id,
            password=password,
        )

    # -- reads ----------------------------------------------------------------------------------

    def cluster_status(self, creds: Credentials) -> dict[str, Any]:
        r = self._call(self._inspect.GetClusterStatus, pb.ClusterStatusRequest(), creds)
        out: dict[str, Any] = {
            "jobs": {JobState(int(c.state)).name: int(c.count) for c in r.jobs},
            "cluster_wide": bool(r.cluster_wide),
            "server_time_ms": int(r.server_time_ms),
        }
        if r.cluster_wide:
            out.update(
                tasks_finished=int(r.tasks_succeeded + r.tasks_failed),
                tasks_succeeded=int(r.tasks_succeeded),
                tasks_failed=int(r.tasks_failed),
                execution_managers=[
                    {
                        "id": int(em.execution_manager_id),
                        "ip": em.ip_address,
                        "executors": int(em.executors),
                        "in_flight": int(em.in_flight),
                        "heartbeat_age_s": max(
                            0.0, (r.server_time_ms - em.last_heartbeat_at_ms) / 1000
                        ),
                    }
                    for em in r.execution_managers
                ],
                queues={
                    "task": int(r.queued_tasks),
                    "commit": int(r.queued_commit),
                    "cleanup": int(r.queued_cleanup),
                },
                session_id=int(r.session_id),
                cached_jobs=int(r.cached_jobs),
                live_task_instances=int(r.live_task_instances),
                recovery=(
                    {
                        "ended_at_ms": int(r.recovery.ended_at_ms),
                        "jobs": int(r.recovery.jobs),
                        "duration_ms": int(r.recovery.duration_ms),
                        "unrecoverable": int(r.recovery.unrecoverable),
                    }
                    if r.HasField("recovery")
                    else None
                ),
            )
        return out

    def list_jobs(
        self,
        creds: Credentials,
        *,
        states: Sequence[JobState] = (),
        resource_group_id: int = 0,
        before_job_id: int = 0,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        request = pb.ListJobsRequest(
            states=[int(s) for s in states],  # type: ignore[misc]
            limit=limit,
            before_job_id=before_job_id,
            resource_group_id=resource_group_id,
        )
        reply = self._call(self._jobs.ListJobs, request, creds)
        return [_job_dict(j) for j in reply.jobs]

    def resource_groups(self, creds: Credentials) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = []
        after = 0
        while True:
            request = pb.ListResourceGroupsRequest(after_id=after, limit=1000)
            reply = self._call(self._groups.ListResourceGroups, request, creds)
            groups += [
                {
                    "id": int(g.resource_group_id),
                    "name": g.external_resource_group_id,
                    "created_at_ms": int(g.created_at_ms),
                }
                for g in reply.groups
            ]
            if len(reply.groups) < 1000:
                return groups
            after = groups[-1]["id"]

    def job_graph(self, creds: Credentials, job_id: int) -> dict[str, Any]:
        r = self._call(self._inspect.GetJobGraph, pb.JobIdRequest(job_id=job_id), creds)
        tasks = []
        for t in r.tasks:
            tid = _taskid.from_proto(t.task_id)
            tasks.append(
                {
                    "id": _node_id(tid),
                    "state": t.state,
                    "reason": t.reason,
                    "detail": t.detail,
                    "failures": int(t.failures),
                    "instances": int(t.live_instances),
                }
            )
        counts = r.counts
        return {
            "job": _job_dict(r.job),
            "graph": json.loads(_core.decompress(r.compressed_serialized_task_graph)),
            "tasks": tasks,
            "live": bool(r.live),
            "counts": {
                "pending": int(counts.pending),
                "ready": int(counts.ready),
                "running": int(counts.running),
                "succeeded": int(counts.succeeded),
                "failed": int(counts.failed),
                "cancelled": int(counts.cancelled),
            },
        }

    def outputs_preview(self, creds: Credentials, job_id: int) -> str:
        reply = self._call(self._jobs.GetJobOutputs, pb.JobIdRequest(job_id=job_id), creds)
        values = [
            msgpack.unpackb(p, raw=False, strict_map_key=False)
            for p in _core.decode_outputs(reply.serialized_outputs)
        ]
        text = json.dumps(_json_safe(values), indent=2, ensure_ascii=False, default=repr)
        if len(text) > PREVIEW_CHARS:
            text = text[:PREVIEW_CHARS] + f"\n... ({len(text) - PREVIEW_CHARS} more characters)"
        return text

    def cancel(self, creds: Credentials, job_id: int) -> JobState:
        reply = self._call(self._jobs.CancelJob, pb.JobIdRequest(job_id=job_id), creds)
        return JobState(int(reply.state))


def _node_id(task_id: int) -> str:
    """A task's id in the page: its index, "commit" or "cleanup"."""
    if task_id == _core.TASK_COMMIT:
        return "commit"
    if task_id == _core.TASK_CLEANUP:
        return "cleanup"
    return str(task_id)


def _job_dict(j: pb.JobSummary) -> dict[str, Any]:
    return {
        "id": int(j.job_id),
        "resource_group_id": int(j.resource_group_id),
        "state": JobState(int(j.state)).name,
        "created_at_ms": int(j.created_at_ms),
        "ended_at_ms": int(j.ended_at_ms),
        "error_message": j.error_message,
    }
