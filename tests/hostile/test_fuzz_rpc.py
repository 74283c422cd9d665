"""Property-based hostile requests against a real storage process: every RPC of every storage
service with generated field values (ids near ones that exist, absurd sizes, unknown enum values,
malformed graphs, inputs and frames), with and without credentials. Each call must end with a
precise status (never INTERNAL or UNKNOWN, never a hang), the process must stay up, and its
memory bounded. `ORBWEAVER_FUZZ_EXAMPLES` sets the number of examples (`benches/fuzz.py` runs
long campaigns of the same generators)."""

from __future__ import annotations

import os
from typing import Any

import grpc
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orbweaver._proto import orbweaver_pb2 as pb
from support import graphs
from support.driver import Driver, group_metadata
from support.fuzzing import messages

EXAMPLES = int(os.environ.get("ORBWEAVER_FUZZ_EXAMPLES", "150"))
STORAGE_SERVICES = [
    "JobOrchestrationService",
    "TaskInstanceManagementService",
    "InboundQueueService",
    "ResourceGroupManagementService",
    "ExecutionManagerLivenessService",
    "SchedulerRegistrationService",
    "SessionManagementService",
]
# A precise answer: anything but these.
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
MAX_RSS_BYTES = 1 << 30


def _methods() -> list[tuple[str, str, Any]]:
    out = []
    for service in STORAGE_SERVICES:
        for method in pb.DESCRIPTOR.services_by_name[service].methods:
            out.append((service, method.name, method.input_type))
    return out


def call(driver: Driver, service: str, method: str, request: Any, metadata: Any) -> grpc.StatusCode:
    fn = driver.storage.channel().unary_unary(
        f"/orbweaver.v1.{service}/{method}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b,
    )
    try:
        fn(request, metadata=metadata, timeout=20)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_storage_rpc_answers_generated_requests_precisely(driver: Driver) -> None:
    job = driver.submit(graphs.diamond(), 3, start=True)
    ids = st.sampled_from([0, 1, driver.rg, job, driver.em, driver.scheduler, 2**63, 2**64 - 1])
    creds = st.sampled_from([(), tuple(group_metadata(driver.rg, b"s3cret"))])
    methods = _methods()
    seen: dict[str, set[grpc.StatusCode]] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        service, method, descriptor = data.draw(st.sampled_from(methods), label="method")
        request = data.draw(messages(descriptor, ids), label="request")
        metadata = data.draw(creds, label="credentials")
        code = call(driver, service, method, request, metadata)
        seen.setdefault(method, set()).add(code)
        assert code not in FORBIDDEN, (method, request, code)

    run()
    assert driver.storage.alive and driver.storage.serving()
    rss = psutil.Process(driver.storage.popen.pid).memory_info().rss  # type: ignore[union-attr]
    assert rss < MAX_RSS_BYTES, f"storage holds {rss >> 20} MiB after the campaign"
    assert len(seen) >= min(len(methods), EXAMPLES // 10), sorted(seen)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_random_bytes_as_any_request(driver: Driver) -> None:
    methods = _methods()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(methods), raw=st.binary(max_size=256))
    def run(method: tuple[str, str, Any], raw: bytes) -> None:
        service, name, _ = method
        fn = driver.storage.channel().unary_unary(f"/orbweaver.v1.{service}/{name}")
        try:
            fn(raw, metadata=group_metadata(driver.rg, b"s3cret"), timeout=20)
        except grpc.RpcError as exc:
            assert exc.code() not in FORBIDDEN, (name, raw, exc.code(), exc.details())

    run()
    assert driver.storage.alive and driver.storage.serving()
