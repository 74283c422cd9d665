"""`durability` from the client's side, against a real storage process (SQLite and MariaDB)
behind a tap that records the requests: the graph's setting travels unless the submission
overrides it, a bad value is refused before anything is sent, and a retried submission keeps
its durability."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver.storage import service
from orbweaver.storage.db import open_database
from support.procs import StorageProcess
from support.taps import StorageTap

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "tasks"))
import e2e_tasks as t


@pytest.fixture
def tap(storage: StorageProcess) -> Iterator[StorageTap]:
    with StorageTap(storage.address) as tap:
        yield tap


@pytest.fixture
def client(tap: StorageTap) -> Iterator[ow.Client]:
    with ow.Client(tap.address) as client:
        client.default_resource_group = client.add_resource_group("durability", b"pw")
        yield client


def graph(durability: ow.Durability = "job") -> ow.TaskGraph:
    g = ow.TaskGraph(durability=durability)
    g.add(t.inc)
    return g


def test_the_submission_overrides_the_graph(
    client: ow.Client, tap: StorageTap, db_url: str
) -> None:
    plain = client.submit(graph(), [1], start=False)
    durable = client.submit(graph("task"), [1], start=False)
    overridden = client.submit(graph("task"), [1], start=False, durability="job")
    many = client.submit_many(graph(), [[1], [2]], start=False, durability="task")
    # The storage reads the wire's values by number.
    assert (service.DURABILITY_UNSPECIFIED, service.DURABILITY_JOB, service.DURABILITY_TASK) == (
        pb.DURABILITY_UNSPECIFIED,
        pb.DURABILITY_JOB,
        pb.DURABILITY_TASK,
    )
    sent = [call.request.durability for call in tap.of("RegisterJob")]
    assert sent == [pb.DURABILITY_JOB, pb.DURABILITY_TASK, pb.DURABILITY_JOB]
    [batch] = tap.of("RegisterJobs")
    assert batch.request.durability == pb.DURABILITY_TASK
    db = open_database(db_url)
    try:
        ids = [plain.id, durable.id, overridden.id, *(j.id for j in many)]
        assert db.task_durable_jobs(ids) == {durable.id, *(j.id for j in many)}
    finally:
        db.close()


def test_a_bad_durability_is_refused_before_anything_is_sent(
    client: ow.Client, tap: StorageTap
) -> None:
    for bad in ("tasks", "JOB", 2):
        with pytest.raises(ow.InvalidArgument, match="durability must be 'job' or 'task'"):
            client.submit(graph(), [1], durability=bad)  # type: ignore[arg-type]
        with pytest.raises(ow.InvalidArgument, match=repr(bad)):
            client.submit_many(graph(), [[1]], durability=bad)  # type: ignore[arg-type]
    assert tap.count("RegisterJob") == tap.count("RegisterJobs") == 0


def test_a_retried_task_durable_submission_creates_one_job(
    client: ow.Client, tap: StorageTap
) -> None:
    tap.lose_reply_next("RegisterJob", grpc.StatusCode.UNAVAILABLE)
    job = client.submit(graph("task"), [4], idempotency_key="once")
    first, retry = tap.of("RegisterJob")
    assert first.request.durability == retry.request.durability == pb.DURABILITY_TASK
    assert [j.id for j in client.jobs()] == [job.id]
    # The same key with another durability is another submission: refused.
    with pytest.raises(ow.OrbweaverError, match="different graph, inputs or durability"):
        client.submit(graph(), [4], idempotency_key="once")
