"""The client against a real storage process whose replies get lost on the way back: retried
submissions carry their idempotency key, so a submission creates its job(s) exactly once."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from support.procs import StorageProcess
from support.taps import StorageTap

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "tasks"))
import e2e_tasks as t

LOST = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def tap(storage: StorageProcess) -> Iterator[StorageTap]:
    with StorageTap(storage.address) as tap:
        yield tap


@pytest.fixture
def client(tap: StorageTap) -> Iterator[ow.Client]:
    with ow.Client(tap.address) as client:
        client.default_resource_group = client.add_resource_group("retries", b"pw")
        yield client


def graph() -> ow.TaskGraph:
    g = ow.TaskGraph()
    g.add(t.inc)
    return g


def test_a_submission_whose_reply_is_lost_creates_one_job(
    client: ow.Client, tap: StorageTap
) -> None:
    tap.lose_reply_next("RegisterJob", LOST)
    job = client.submit(graph(), [1], start=False)
    first, retry = tap.of("RegisterJob")
    assert first.code == LOST and retry.code == grpc.StatusCode.OK
    assert first.request.idempotency_key == retry.request.idempotency_key != ""
    assert first.reply is not None, "the first call did not reach storage"
    assert job.id == pb.RegisterJobReply.FromString(first.reply).job_id
    assert [j.id for j in client.jobs()] == [job.id]
    assert job.state == ow.JobState.READY
    # The same graph and inputs submitted again on purpose is another job (another key).
    again = client.submit(graph(), [1], start=False)
    assert again.id != job.id
    assert sorted(j.id for j in client.jobs()) == sorted([job.id, again.id])


def test_a_batch_whose_reply_is_lost_creates_each_job_once(
    client: ow.Client, tap: StorageTap
) -> None:
    tap.lose_reply_next("RegisterJobs", LOST, LOST)
    jobs = client.submit_many(graph(), [[i] for i in range(20)], start=False)
    calls = tap.of("RegisterJobs")
    assert [c.code for c in calls] == [LOST, LOST, grpc.StatusCode.OK]
    assert all(c.reply is not None for c in calls), "a call did not reach storage"
    keys = [[j.idempotency_key for j in c.request.jobs] for c in calls]
    assert keys[0] == keys[1] == keys[2] and len(set(keys[0])) == 20
    assert len({j.id for j in jobs}) == 20
    assert sorted(j.id for j in client.jobs()) == sorted(j.id for j in jobs)
