"""Nobody can strand ready work (the issue's reproduction: 4 rogue pollers for 5 s used to leave
40 of 40 jobs RUNNING for minutes). Without the cluster token a poller is refused; a caller with
it but not the registered scheduler's id is refused; and even one that polls as the registered
scheduler (a token holder guessing the id, or a scheduler that stalls) strands nothing: what it
took and nobody registered is offered again after the visibility timeout."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import orbweaver as ow
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import TOKEN_METADATA_KEY

TASKS = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS))
import hostile_tasks as t  # noqa: E402

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def cluster(db_url: str, tmp_path: Path) -> Iterator[ow.LocalCluster]:
    config = tmp_path / "storage.toml"
    config.write_text("[storage]\nvisibility_timeout = 2.0\ninstance_gc_interval = 0.25\n")
    with ow.LocalCluster(
        workers=2,
        db=db_url,
        tasks_dir=TASKS,
        log_dir=tmp_path / "logs",
        storage_args=["--config", str(config)],
    ) as c:
        yield c


def test_rogue_pollers_strand_nothing(cluster: ow.LocalCluster) -> None:
    channel = grpc.insecure_channel(cluster.address)
    queue = pb_grpc.InboundQueueServiceStub(channel)
    token = [(TOKEN_METADATA_KEY, f"Bearer {cluster.token}")]
    registered = pb_grpc.SchedulerRegistrationServiceStub(channel).GetSchedulers(
        pb.Void(), metadata=token, timeout=10
    )
    [scheduler] = registered.schedulers
    codes: dict[str, set[grpc.StatusCode]] = {"anonymous": set(), "stranger": set()}
    stolen: list[int] = []
    stop = threading.Event()

    def rogue(kind: str) -> None:
        while not stop.is_set():
            if kind == "anonymous":  # no token
                request, metadata = pb.PollAllRequest(max_tasks=100, wait_ms=50), ()
            elif kind == "stranger":  # the token, another scheduler's id
                request = pb.PollAllRequest(
                    max_tasks=100, wait_ms=50, scheduler_id=scheduler.scheduler_id + 7
                )
                metadata = tuple(token)
            else:  # the token and the registered scheduler's id: a thief
                request = pb.PollAllRequest(
                    max_tasks=100, wait_ms=50, scheduler_id=scheduler.scheduler_id
                )
                metadata = tuple(token)
            try:
                reply = queue.PollAll(request, metadata=metadata, timeout=10)
            except grpc.RpcError as exc:
                codes[kind].add(exc.code())
                continue
            stolen.extend(entry.job_id for entry in reply.tasks)

    g = ow.TaskGraph()
    g.add(t.small)
    rogues = [
        threading.Thread(target=rogue, args=(kind,), daemon=True)
        for kind in ("anonymous", "stranger", "thief", "thief")
    ]
    for thread in rogues:
        thread.start()
    client = cluster.client()
    jobs = [client.submit(g, [i]) for i in range(40)]
    time.sleep(5)
    stop.set()
    for thread in rogues:
        thread.join(15)
    channel.close()

    assert codes["anonymous"] == {grpc.StatusCode.UNAUTHENTICATED}
    assert codes["stranger"] == {grpc.StatusCode.FAILED_PRECONDITION}
    assert stolen, "the thieves took nothing: the test proves nothing"
    # Every job ends, the stolen ones after the visibility timeout.
    assert [job.result(timeout=60) for job in jobs] == [[i + 1] for i in range(40)]
