"""Unary calls over a `Calls` stream (`orbweaver._streamed`), tested as an attacker would: raw
streams against a real storage process with a cluster token and tenants. A call on a stream must
be served exactly as the unary call (credentials checked per call, errors with the same status),
garbage must get a precise status without ending the stream or the process, and streams are
bounded. The Python client's calls go over these streams; where none can be opened it makes
unary calls."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import orbweaver as ow
from orbweaver import _rpc, _streamed
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import TOKEN_METADATA_KEY
from support import graphs
from support.driver import group_metadata
from support.graphs import compressed, int_inputs
from support.procs import StorageProcess

TOKEN = "cluster-token-for-services"
OPERATOR = "operator-token-for-admins"
JOBS = "orbweaver.v1.JobOrchestrationService"
INSTANCES = "orbweaver.v1.TaskInstanceManagementService"


def _bearer(token: str) -> list[tuple[str, str | bytes]]:
    return [(TOKEN_METADATA_KEY, f"Bearer {token}")]


class RawStream:
    """A `Calls` stream made by hand: `send` puts any bytes on it, `next` reads one reply."""

    def __init__(
        self, channel: grpc.Channel, service: str, metadata: list[tuple[str, str | bytes]]
    ) -> None:
        self._q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        method = channel.stream_stream(
            f"/{service}/Calls",
            request_serializer=lambda b: b,
            response_deserializer=pb.StreamedReply.FromString,
        )
        self.call: Any = method(iter(self._q.get, None), metadata=metadata, timeout=60)

    def send(self, data: bytes) -> pb.StreamedReply:
        self._q.put(data)
        reply: pb.StreamedReply = next(self.call)
        return reply

    def ask(self, method: str, request: Any, timeout_ms: int = 30_000) -> pb.StreamedReply:
        call = pb.StreamedCall(
            method=method, request=request.SerializeToString(), timeout_ms=timeout_ms
        )
        return self.send(call.SerializeToString())

    def close(self) -> None:
        self._q.put(None)
        self.call.cancel()


def _code(reply: pb.StreamedReply) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == reply.code)


@pytest.fixture
def secured(db_url: str, tmp_path: Path) -> Iterator[StorageProcess]:
    """A storage with a cluster token and an operator token, and 8 handler threads (so at most
    2 call streams)."""
    proc = StorageProcess(
        db_url,
        tmp_path,
        env={
            "ORBWEAVER_TOKEN": TOKEN,
            "ORBWEAVER_OPERATOR_TOKEN": OPERATOR,
            "ORBWEAVER_STORAGE_GRPC_WORKERS": "8",
        },
    )
    proc.start()
    yield proc
    proc.close()
    proc.terminate()


def _group(storage: StorageProcess, name: str, password: bytes) -> int:
    reply = pb_grpc.ResourceGroupManagementServiceStub(storage.channel()).AddResourceGroup(
        pb.AddResourceGroupRequest(external_resource_group_id=name, password=password),
        metadata=_bearer(OPERATOR),
        timeout=30,
    )
    return int(reply.resource_group_id)


def _register(rg: int) -> pb.RegisterJobRequest:
    return pb.RegisterJobRequest(
        resource_group_id=rg,
        compressed_serialized_task_graph=compressed(graphs.single()),
        compressed_serialized_inputs=int_inputs(1),
    )


def test_calls_on_a_stream_are_checked_like_unary_calls(secured: StorageProcess) -> None:
    alpha = _group(secured, "alpha", b"alpha-pw")
    beta = _group(secured, "beta", b"beta-pw")
    mine = RawStream(secured.channel(), JOBS, group_metadata(alpha, b"alpha-pw"))
    theirs = RawStream(secured.channel(), JOBS, group_metadata(beta, b"beta-pw"))
    try:
        registered = mine.ask("RegisterJob", _register(alpha))
        assert registered.code == 0, registered.message
        job_id = pb.RegisterJobReply.FromString(registered.reply).job_id
        assert job_id > 0

        # Another tenant's stream may not see the job, and may not submit into alpha's group.
        seen = theirs.ask("GetJobState", pb.JobIdRequest(job_id=job_id))
        assert _code(seen) == grpc.StatusCode.NOT_FOUND
        intruded = theirs.ask("RegisterJob", _register(alpha))
        assert _code(intruded) == grpc.StatusCode.PERMISSION_DENIED, intruded.message
        cancel = theirs.ask("CancelJob", pb.JobIdRequest(job_id=job_id))
        assert _code(cancel) == grpc.StatusCode.NOT_FOUND

        # The errors ended calls, not the streams: both still serve.
        state = mine.ask("GetJobState", pb.JobIdRequest(job_id=job_id))
        assert state.code == 0
        cancelled = pb.JobState.Value("JOB_STATE_CANCELLED")
        assert pb.JobStateReply.FromString(state.reply).state != cancelled
        assert theirs.ask("ListJobs", pb.ListJobsRequest(limit=10)).code == 0
    finally:
        mine.close()
        theirs.close()

    # No credentials at all: every call is refused, one by one. (The server has room for two
    # streams: it frees the closed ones' places as their handlers end.)
    deadline = time.monotonic() + 10
    while True:
        anonymous = RawStream(secured.channel(), JOBS, [])
        try:
            refused = anonymous.ask("GetJobState", pb.JobIdRequest(job_id=job_id))
            break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
        finally:
            anonymous.close()
    assert _code(refused) == grpc.StatusCode.UNAUTHENTICATED


def test_service_streams_need_the_cluster_token(secured: StorageProcess) -> None:
    for metadata in ([], _bearer("not-the-token"), _bearer(OPERATOR)):
        stream = RawStream(secured.channel(), INSTANCES, metadata)
        with pytest.raises(grpc.RpcError) as info:
            stream.ask("TakeReadyTasks", pb.TakeReadyTasksRequest(max_items=1, wait_ms=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stream.close()


def test_garbage_on_a_stream_gets_precise_statuses(secured: StorageProcess) -> None:
    alpha = _group(secured, "alpha", b"alpha-pw")
    stream = RawStream(secured.channel(), JOBS, group_metadata(alpha, b"alpha-pw"))
    try:
        not_a_call = stream.send(b"\xff\xfe\xfd garbage")
        assert _code(not_a_call) == grpc.StatusCode.INVALID_ARGUMENT
        assert "StreamedCall" in not_a_call.message

        unknown = stream.ask("DropAllTables", pb.Void())
        assert _code(unknown) == grpc.StatusCode.UNIMPLEMENTED
        nested = stream.ask("Calls", pb.Void())  # a stream is not a unary method
        assert _code(nested) == grpc.StatusCode.UNIMPLEMENTED
        other_service = stream.ask("TakeReadyTasks", pb.TakeReadyTasksRequest(max_items=1))
        assert _code(other_service) == grpc.StatusCode.UNIMPLEMENTED

        bad_request = stream.send(
            pb.StreamedCall(method="RegisterJob", request=b"\xff\xff\xff").SerializeToString()
        )
        assert _code(bad_request) == grpc.StatusCode.INVALID_ARGUMENT
        assert "RegisterJobRequest" in bad_request.message

        # Still serving, on the same stream; the process is alive.
        assert stream.ask("RegisterJob", _register(alpha)).code == 0
    finally:
        stream.close()
    assert secured.alive


def test_streams_are_bounded_and_clients_fall_back_to_unary_calls(
    secured: StorageProcess,
) -> None:
    alpha = _group(secured, "alpha", b"alpha-pw")
    held = [
        RawStream(secured.channel(), JOBS, group_metadata(alpha, b"alpha-pw")) for _ in range(2)
    ]
    try:
        # Each is open on the server once it answered a call.
        registered = held[0].ask("RegisterJob", _register(alpha))
        job_id = pb.RegisterJobReply.FromString(registered.reply).job_id
        assert held[1].ask("ListJobs", pb.ListJobsRequest(limit=1)).code == 0
        third = RawStream(secured.channel(), JOBS, group_metadata(alpha, b"alpha-pw"))
        with pytest.raises(grpc.RpcError) as info:
            third.ask("ListJobs", pb.ListJobsRequest(limit=1))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _streamed.TOO_MANY_STREAMS in (info.value.details() or "")
        third.close()

        # Every stream taken: the client's calls go unary, and work.
        with ow.Client(secured.address, resource_group="alpha", password="alpha-pw") as client:
            assert client.get_job(job_id).state == ow.JobState.READY
            assert client.get_job(job_id).cancel() == ow.JobState.CANCELLED
    finally:
        for stream in held:
            stream.close()


def test_a_call_on_a_stream_keeps_its_deadline(secured: StorageProcess) -> None:
    alpha = _group(secured, "alpha", b"alpha-pw")
    md = group_metadata(alpha, b"alpha-pw")
    channel = _rpc.make_channel(secured.address)
    try:
        jobs = pb_grpc.JobOrchestrationServiceStub(channel)
        job_id = jobs.RegisterJob(_register(alpha), metadata=md, timeout=30).job_id
        assert isinstance(channel, _rpc.LeaderChannel) and channel._pools  # on a stream
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            # The job never runs (not started): storage would wait 20 s, the caller 0.5 s.
            jobs.WaitJob(
                pb.WaitJobRequest(job_id=job_id, timeout_ms=20_000), metadata=md, timeout=0.5
            )
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - began < 10
        # The stream it was on is gone; the next call opens another.
        state = jobs.GetJobState(pb.JobIdRequest(job_id=job_id), metadata=md, timeout=30)
        assert state.state == pb.JobState.Value("JOB_STATE_READY")
    finally:
        channel.close()
    assert secured.alive


class _Queue(_streamed.CallsServed, pb_grpc.InboundQueueServiceServicer):
    """A stand-in inbound queue for the transport's own bounds (no storage behind it)."""

    def __init__(self) -> None:
        self.polls = 0

    def PollAll(self, request: pb.PollAllRequest, context: grpc.ServicerContext) -> Any:
        self.polls += 1
        return pb.PollAllReply()


def test_an_idle_stream_is_ended_by_the_server() -> None:
    limits = _streamed.StreamLimits(max_streams=4, idle_s=0.5)
    server = _rpc.make_server("127.0.0.1:0", max_workers=8)
    servicer = _Queue()
    _rpc.add_servicer(server.grpc_server, servicer, "InboundQueueService", streams=limits)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        stream = RawStream(channel, "orbweaver.v1.InboundQueueService", [])
        assert stream.ask("PollAll", pb.PollAllRequest()).code == 0
        assert servicer.polls == 1 and limits.open_streams == 1
        deadline = time.monotonic() + 30
        while limits.open_streams and time.monotonic() < deadline:
            time.sleep(0.1)
        assert limits.open_streams == 0  # its handler thread is free again
        with pytest.raises(grpc.RpcError) as info:
            stream.ask("PollAll", pb.PollAllRequest())
        assert info.value.code() == grpc.StatusCode.CANCELLED
        stream.close()
    finally:
        channel.close()
        server.stop(0)


def test_call_streams_can_be_turned_off() -> None:
    assert _streamed.enabled({})
    assert _streamed.enabled({_streamed.ENV: "true"})
    assert not _streamed.enabled({_streamed.ENV: "off"})
    assert not _streamed.enabled({_streamed.ENV: "0"})
    with pytest.raises(ow.errors.ConfigError, match=_streamed.ENV):
        _streamed.enabled({_streamed.ENV: "sometimes"})
    channel = _rpc.LeaderChannel(["127.0.0.1:1"], grpc.insecure_channel, streams=False)
    with channel:
        stub = pb_grpc.JobOrchestrationServiceStub(channel)  # a service with `Calls`
        with pytest.raises(grpc.RpcError):
            stub.GetJobState(pb.JobIdRequest(job_id=1), timeout=0.2)
        assert not channel._pools  # made unary


def test_clients_ride_over_a_storage_restart_on_their_streams(secured: StorageProcess) -> None:
    alpha = _group(secured, "alpha", b"alpha-pw")
    jobs = pb_grpc.JobOrchestrationServiceStub(secured.channel())
    md = group_metadata(alpha, b"alpha-pw")
    job_id = jobs.RegisterJob(_register(alpha), metadata=md, timeout=30).job_id
    with ow.Client(secured.address, resource_group="alpha", password="alpha-pw") as client:
        assert client.get_job(job_id).state == ow.JobState.READY  # its stream is open now
        for stop in (secured.terminate, secured.kill):  # ends its streams; then it vanishes
            stop()
            secured.start()
            # The stream the client held is gone: the call goes on a new one (or is retried
            # as after any storage restart), never failing as "cancelled".
            assert client.get_job(job_id).state == ow.JobState.READY
