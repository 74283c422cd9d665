"""Tenant isolation and roles, tested as an attacker would: raw gRPC with forged, missing and
borrowed credentials against a real storage process, and the Python client.

Roles: services carry the cluster token (and nothing else may); a resource group's credentials
see only that group's jobs; the operator token sees every group and alone creates groups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import TOKEN_METADATA_KEY
from support import graphs
from support.driver import Driver
from support.graphs import compressed, int_inputs
from support.procs import StorageProcess, stubs_for

TOKEN = "cluster-token-for-services"
OPERATOR = "operator-token-for-admins"

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def _bearer(token: str) -> list[tuple[str, str]]:
    return [(TOKEN_METADATA_KEY, f"Bearer {token}")]


def _code(fn, *args, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=30, **kwargs)
    return info.value.code()


@pytest.fixture
def secured(db_url: str, tmp_path: Path) -> Iterator[StorageProcess]:
    """A storage process with a cluster token and an operator token."""
    proc = StorageProcess(
        db_url, tmp_path, env={"ORBWEAVER_TOKEN": TOKEN, "ORBWEAVER_OPERATOR_TOKEN": OPERATOR}
    )
    proc.start()
    yield proc
    proc.close()
    proc.terminate()


class Tenant:
    """One resource group: its id, its stubs (with its credentials) and one finished job."""

    def __init__(self, storage: StorageProcess, name: str, password: bytes) -> None:
        raw = storage.stubs()
        self.id = raw.groups.AddResourceGroup(
            pb.AddResourceGroupRequest(external_resource_group_id=name, password=password),
            metadata=_bearer(OPERATOR),
            timeout=30,
        ).resource_group_id
        self.password = password
        self.s = Driver(storage).as_group(self.id, password)
        self.job = self.s.jobs.RegisterJob(
            pb.RegisterJobRequest(
                resource_group_id=self.id,
                compressed_serialized_task_graph=compressed(graphs.single()),
                compressed_serialized_inputs=int_inputs(1),
            ),
            timeout=30,
        ).job_id


@pytest.fixture
def tenants(secured: StorageProcess) -> tuple[Tenant, Tenant]:
    return Tenant(secured, "alpha", b"alpha-pw"), Tenant(secured, "beta", b"beta-pw")


def _job_calls(job_id: int) -> list[tuple[str, object]]:
    return [
        ("GetJobState", pb.JobIdRequest(job_id=job_id)),
        ("GetJobOutputs", pb.JobIdRequest(job_id=job_id)),
        ("GetJobError", pb.JobIdRequest(job_id=job_id)),
        ("StartJob", pb.JobIdRequest(job_id=job_id)),
        ("CancelJob", pb.JobIdRequest(job_id=job_id)),
        ("WaitJob", pb.WaitJobRequest(job_id=job_id, timeout_ms=10)),
        ("WaitJobs", pb.WaitJobsRequest(job_ids=[job_id], timeout_ms=10)),
        ("GetJobProgress", pb.JobProgressRequest(job_id=job_id, max_explanations=5)),
    ]


def test_a_group_cannot_touch_another_groups_job(tenants: tuple[Tenant, Tenant]) -> None:
    alpha, beta = tenants
    for method, request in _job_calls(beta.job):
        assert _code(getattr(alpha.s.jobs, method), request) == NOT_FOUND, method
    # Nothing happened to beta's job, and beta still sees it.
    assert beta.s.jobs.GetJobState(pb.JobIdRequest(job_id=beta.job), timeout=30).state == (
        pb.JOB_STATE_READY
    )


def test_a_missing_job_and_a_foreign_job_look_the_same(tenants: tuple[Tenant, Tenant]) -> None:
    alpha, beta = tenants
    with pytest.raises(grpc.RpcError) as foreign:
        alpha.s.jobs.GetJobState(pb.JobIdRequest(job_id=beta.job), timeout=30)
    missing_id = 10**9
    with pytest.raises(grpc.RpcError) as missing:
        alpha.s.jobs.GetJobState(pb.JobIdRequest(job_id=missing_id), timeout=30)
    assert foreign.value.code() == missing.value.code() == NOT_FOUND
    assert foreign.value.details().replace(str(beta.job), "N") == missing.value.details().replace(
        str(missing_id), "N"
    )


def test_listing_shows_only_the_callers_group(tenants: tuple[Tenant, Tenant]) -> None:
    alpha, beta = tenants
    listed = alpha.s.jobs.ListJobs(pb.ListJobsRequest(limit=100), timeout=30).jobs
    assert [j.job_id for j in listed] == [alpha.job]
    assert {j.resource_group_id for j in listed} == {alpha.id}
    asked_for_beta = pb.ListJobsRequest(limit=100, resource_group_id=beta.id)
    assert _code(alpha.s.jobs.ListJobs, asked_for_beta) == grpc.StatusCode.PERMISSION_DENIED
    groups = alpha.s.groups.ListResourceGroups(pb.ListResourceGroupsRequest(), timeout=30).groups
    assert [g.resource_group_id for g in groups] == [alpha.id]


def test_a_group_cannot_submit_into_another_group(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = tenants
    request = pb.RegisterJobRequest(
        resource_group_id=beta.id,
        compressed_serialized_task_graph=compressed(graphs.single()),
        compressed_serialized_inputs=int_inputs(1),
    )
    assert _code(alpha.s.jobs.RegisterJob, request) == grpc.StatusCode.PERMISSION_DENIED
    request.password = b"alpha-pw"  # alpha's password does not open beta
    assert _code(alpha.s.jobs.RegisterJob, request) == UNAUTHENTICATED


def test_every_client_call_needs_credentials(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, _ = tenants
    anonymous = secured.stubs()
    for method, request in _job_calls(alpha.job):
        assert _code(getattr(anonymous.jobs, method), request) == UNAUTHENTICATED, method
    assert _code(anonymous.jobs.ListJobs, pb.ListJobsRequest()) == UNAUTHENTICATED
    no_password = pb.RegisterJobRequest(
        resource_group_id=alpha.id,
        compressed_serialized_task_graph=compressed(graphs.single()),
        compressed_serialized_inputs=int_inputs(1),
    )
    assert _code(anonymous.jobs.RegisterJob, no_password) == UNAUTHENTICATED
    wrong = Driver(secured).as_group(alpha.id, b"guess")
    for method, request in _job_calls(alpha.job):
        assert _code(getattr(wrong.jobs, method), request) == UNAUTHENTICATED, method


def test_the_cluster_token_opens_no_client_call(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant]
) -> None:
    """A token holder (any scheduler or worker host) can neither read jobs nor submit into a
    group without its password."""
    alpha, _ = tenants
    service = secured.stubs()
    denied = grpc.StatusCode.PERMISSION_DENIED
    for method, request in _job_calls(alpha.job):
        code = _code(getattr(service.jobs, method), request, metadata=_bearer(TOKEN))
        assert code == denied, method
    submit = pb.RegisterJobRequest(
        resource_group_id=alpha.id,
        compressed_serialized_task_graph=compressed(graphs.single()),
        compressed_serialized_inputs=int_inputs(1),
    )
    assert _code(service.jobs.RegisterJob, submit, metadata=_bearer(TOKEN)) == denied
    add = pb.AddResourceGroupRequest(external_resource_group_id="mine", password=b"x")
    assert _code(service.groups.AddResourceGroup, add, metadata=_bearer(TOKEN)) == denied


def test_service_calls_need_the_cluster_token(secured: StorageProcess) -> None:
    anonymous = secured.stubs()
    assert (
        _code(anonymous.queue.PollAll, pb.PollAllRequest(max_tasks=10, scheduler_id=1))
        == UNAUTHENTICATED
    )
    assert (
        _code(
            anonymous.liveness.RegisterExecutionManager,
            pb.RegisterExecutionManagerRequest(ip_address="127.0.0.1"),
        )
        == UNAUTHENTICATED
    )
    assert (
        _code(anonymous.schedulers.RegisterScheduler, pb.RegisterSchedulerRequest(host="h", port=1))
        == UNAUTHENTICATED
    )
    take = pb.TakeReadyTasksRequest(execution_manager_id=1, session_id=1, max_items=1)
    assert _code(anonymous.instances.TakeReadyTasks, take) == UNAUTHENTICATED
    operator = stubs_for(secured.channel())
    code = _code(operator.session.GetSession, pb.Void(), metadata=_bearer(OPERATOR))
    assert code == UNAUTHENTICATED  # the operator token is not a service credential


def test_only_the_operator_creates_groups_and_sees_everything(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = tenants
    add = pb.AddResourceGroupRequest(external_resource_group_id="gamma", password=b"pw")
    assert _code(alpha.s.groups.AddResourceGroup, add) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(secured.stubs().groups.AddResourceGroup, add) == grpc.StatusCode.PERMISSION_DENIED
    op = secured.stubs()
    listed = op.jobs.ListJobs(pb.ListJobsRequest(limit=100), metadata=_bearer(OPERATOR), timeout=30)
    assert sorted(j.job_id for j in listed.jobs) == sorted([alpha.job, beta.job])
    only_beta = op.jobs.ListJobs(
        pb.ListJobsRequest(limit=100, resource_group_id=beta.id),
        metadata=_bearer(OPERATOR),
        timeout=30,
    )
    assert [j.job_id for j in only_beta.jobs] == [beta.job]
    state = op.jobs.CancelJob(
        pb.JobIdRequest(job_id=beta.job), metadata=_bearer(OPERATOR), timeout=30
    ).state
    assert state == pb.JOB_STATE_CANCELLED
    groups = op.groups.ListResourceGroups(
        pb.ListResourceGroupsRequest(), metadata=_bearer(OPERATOR), timeout=30
    ).groups
    assert {g.external_resource_group_id for g in groups} == {"alpha", "beta"}


def test_new_groups_need_a_password(secured: StorageProcess) -> None:
    add = pb.AddResourceGroupRequest(external_resource_group_id="open", password=b"")
    code = _code(secured.stubs().groups.AddResourceGroup, add, metadata=_bearer(OPERATOR))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_the_python_client_acts_within_its_group(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = tenants
    with ow.Client(secured.address, resource_group="alpha", password="alpha-pw") as client:
        assert [j.id for j in client.jobs()] == [alpha.job]
        assert client.get_job(alpha.job).state == ow.JobState.READY
        with pytest.raises(ow.JobNotFound):
            client.get_job(beta.job)
        with pytest.raises(ow.PermissionDenied):
            client.add_resource_group("delta", "pw")
    with (
        ow.Client(secured.address, resource_group="alpha", password="nope") as client,
        pytest.raises(ow.Unauthenticated),
    ):
        client.jobs()
    with ow.Client(secured.address, operator_token=OPERATOR) as admin:
        assert sorted(j.id for j in admin.jobs()) == sorted([alpha.job, beta.job])
        assert {g.name for g in admin.resource_groups()} == {"alpha", "beta"}


def test_the_client_reads_its_credentials_from_the_environment(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant], monkeypatch: pytest.MonkeyPatch
) -> None:
    alpha, _ = tenants
    monkeypatch.setenv("ORBWEAVER_STORAGE", secured.address)
    monkeypatch.setenv("ORBWEAVER_RESOURCE_GROUP", "alpha")
    monkeypatch.setenv("ORBWEAVER_PASSWORD", "alpha-pw")
    monkeypatch.setenv("ORBWEAVER_TOKEN", TOKEN)  # a client never sends it
    with ow.Client() as client:
        assert [j.id for j in client.jobs()] == [alpha.job]


def test_wrong_passwords_are_cheap_to_refuse(
    secured: StorageProcess, tenants: tuple[Tenant, Tenant]
) -> None:
    """Many concurrent wrong guesses: every one refused, storage keeps serving its tenants."""
    from concurrent.futures import ThreadPoolExecutor

    alpha, _ = tenants
    channel = secured.channel()
    jobs = pb_grpc.JobOrchestrationServiceStub(channel)

    def guess(i: int) -> grpc.StatusCode:
        md = [("orbweaver-group", str(alpha.id)), ("orbweaver-password-bin", b"guess-%d" % (i % 8))]
        try:
            jobs.GetJobState(pb.JobIdRequest(job_id=alpha.job), metadata=md, timeout=60)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(guess, range(200)))
    assert set(codes) == {UNAUTHENTICATED}
    state = alpha.s.jobs.GetJobState(pb.JobIdRequest(job_id=alpha.job), timeout=30).state
    assert state == pb.JOB_STATE_READY
    assert secured.alive
