"""Helpers shared by the scheduler tests: bounded waits and a fake storage service.

The fake storage is a peer behind the gRPC interface the scheduler uses (`InboundQueueService.
PollAll` and `SchedulerRegistrationService.RegisterScheduler`); everything else is real.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Callable

import grpc
import pytest

from orbweaver import _rpc
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until it is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ready(rg: int, job: int, index: int) -> pb.ReadyTask:
    return pb.ReadyTask(resource_group_id=rg, job_id=job, task_id=pb.TaskId(index=index))


def ready_commit(rg: int, job: int) -> pb.ReadyTask:
    return pb.ReadyTask(resource_group_id=rg, job_id=job, task_id=pb.TaskId(commit=pb.Void()))


def ready_cleanup(rg: int, job: int) -> pb.ReadyTask:
    return pb.ReadyTask(resource_group_id=rg, job_id=job, task_id=pb.TaskId(cleanup=pb.Void()))


class FakeStorage(
    pb_grpc.InboundQueueServiceServicer, pb_grpc.SchedulerRegistrationServiceServicer
):
    """A scripted storage: three lanes of entries, a session id, injectable failures."""

    def __init__(self, session_id: int = 1) -> None:
        self.session_id = session_id
        self.lanes: dict[str, deque[pb.ReadyTask]] = {
            "tasks": deque(),
            "commit": deque(),
            "cleanup": deque(),
        }
        self.cond = threading.Condition()
        self.failures: deque[grpc.StatusCode] = deque()
        self.registrations: list[tuple[str, int]] = []
        self.next_scheduler_id = 7
        self.polls = 0
        self.entered = 0
        self.failed_polls = 0
        self.server: _rpc.Server | None = None
        # While set, polls hang (up to 30 s) as if storage were stuck.
        self.hang = threading.Event()
        self.release = threading.Event()

    # -- scripting ------------------------------------------------------------------------------

    def push(self, lane: str, *entries: pb.ReadyTask, session_id: int | None = None) -> None:
        with self.cond:
            if session_id is not None:
                self.session_id = session_id
            self.lanes[lane].extend(entries)
            self.cond.notify_all()

    def fail_polls(self, *codes: grpc.StatusCode) -> None:
        with self.cond:
            self.failures.extend(codes)

    def pending(self) -> int:
        with self.cond:
            return sum(len(lane) for lane in self.lanes.values())

    # -- RPCs -----------------------------------------------------------------------------------

    def RegisterScheduler(
        self, request: pb.RegisterSchedulerRequest, context: grpc.ServicerContext
    ) -> pb.SchedulerRegistration:
        with self.cond:
            self.registrations.append((request.host, request.port))
            scheduler_id = self.next_scheduler_id
            self.next_scheduler_id += 1
            return pb.SchedulerRegistration(scheduler_id=scheduler_id, session_id=self.session_id)

    def PollAll(self, request: pb.PollAllRequest, context: grpc.ServicerContext) -> pb.PollAllReply:
        self.entered += 1
        if self.hang.is_set():
            self.release.wait(30)
        with self.cond:
            self.polls += 1
            if self.failures:
                code = self.failures.popleft()
                self.failed_polls += 1
                context.abort(code, f"injected failure {code.name}")
            budgets = {
                "tasks": request.max_tasks,
                "commit": request.max_commit,
                "cleanup": request.max_cleanup,
            }

            def has_work() -> bool:
                return any(self.lanes[k] and budgets[k] for k in budgets)

            if not has_work() and request.wait_ms:
                self.cond.wait_for(has_work, timeout=min(request.wait_ms, 200) / 1000.0)
            taken = {}
            for lane, budget in budgets.items():
                queue = self.lanes[lane]
                taken[lane] = [queue.popleft() for _ in range(min(budget, len(queue)))]
            return pb.PollAllReply(
                session_id=self.session_id,
                tasks=taken["tasks"],
                commit=taken["commit"],
                cleanup=taken["cleanup"],
            )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, port: int = 0, security: _rpc.Security | None = None) -> int:
        server = _rpc.make_server(f"127.0.0.1:{port}", security, max_workers=8)
        pb_grpc.add_InboundQueueServiceServicer_to_server(self, server.grpc_server)
        pb_grpc.add_SchedulerRegistrationServiceServicer_to_server(self, server.grpc_server)
        server.start()
        self.server = server
        return server.port

    def stop(self) -> None:
        self.release.set()
        with self.cond:
            self.cond.notify_all()
        if self.server is not None:
            self.server.stop(0)
            pool = getattr(getattr(self.server.grpc_server, "_state", None), "thread_pool", None)
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            self.server = None

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"
