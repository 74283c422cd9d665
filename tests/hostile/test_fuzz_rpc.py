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

from support import graphs
from support.driver import Driver, group_metadata
from support.fuzzing import IMPRECISE, call_raw, messages, storage_methods

EXAMPLES = int(os.environ.get("ORBWEAVER_FUZZ_EXAMPLES", "150"))
MAX_RSS_BYTES = 1 << 30


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_storage_rpc_answers_generated_requests_precisely(driver: Driver) -> None:
    job = driver.submit(graphs.diamond(), 3, start=True)
    ids = st.sampled_from([0, 1, driver.rg, job, driver.em, driver.scheduler, 2**63, 2**64 - 1])
    creds = st.sampled_from([(), tuple(group_metadata(driver.rg, b"s3cret"))])
    methods = storage_methods()
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
        code = call_raw(driver.storage.channel(), service, method, request, metadata)
        seen.setdefault(method, set()).add(code)
        assert code not in IMPRECISE, (method, request, code)

    run()
    assert driver.storage.alive and driver.storage.serving()
    rss = psutil.Process(driver.storage.popen.pid).memory_info().rss  # type: ignore[union-attr]
    assert rss < MAX_RSS_BYTES, f"storage holds {rss >> 20} MiB after the campaign"
    assert len(seen) >= min(len(methods), EXAMPLES // 10), sorted(seen)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_random_bytes_as_any_request(driver: Driver) -> None:
    methods = storage_methods()
    creds = group_metadata(driver.rg, b"s3cret")

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(methods), raw=st.binary(max_size=256))
    def run(method: tuple[str, str, Any], raw: bytes) -> None:
        service, name, _ = method
        code = call_raw(driver.storage.channel(), service, name, raw, creds)
        assert code not in IMPRECISE, (name, raw, code)

    run()
    assert driver.storage.alive and driver.storage.serving()
