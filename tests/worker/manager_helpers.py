"""Test doubles and observers for the execution-manager tests.

* `FakeScheduler`: an in-test gRPC `SchedulerService` that hands out crafted assignments (job,
  task, session and scheduler id of the test's choosing) and records every call: polls with
  their acknowledgements, heartbeats and shutdowns. It can be stopped and restarted on the same
  port, and told to fail polls, to play a scheduler outage.
* The taps in front of real storage and scheduler processes live in `support.taps`.
* `PeerRecorder`: wraps the EM's real peers (`SchedulerPeer`, `StoragePeer`) in the process
  and records every call they forward, in one log for both, so a test sees the order in which
  the EM made its calls across scheduler and storage (each tap only orders its own).
* `SchedulerProcess`: a real `python -m orbweaver scheduler` process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from orbweaver import _rpc, _taskid
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from support.procs import ServiceProcess

FAKE_SCHEDULER_ID = 77
# Longest a fake long poll parks a server thread, whatever the EM asks for.
_MAX_POLL_WAIT_S = 5.0


# ---------------------------------------------------------------------------------------------
# Fake scheduler
# ---------------------------------------------------------------------------------------------


@dataclass
class Poll:
    """One `NextTasks`/`NextTask` call as the fake scheduler received it."""

    at: float
    em_id: int
    acks: list[int]
    max_items: int
    failed: bool = False
    delivered: list[int] = field(default_factory=list)


class FakeScheduler(pb_grpc.SchedulerServiceServicer):
    """A scheduler whose assignments the test crafts; records everything the EM says."""

    def __init__(self, scheduler_id: int = FAKE_SCHEDULER_ID, port: int = 0) -> None:
        self.scheduler_id = scheduler_id
        self.port = port
        self._cond = threading.Condition()
        self._pending: deque[pb.TaskAssignment] = deque()
        self._next_id = 1000
        self._fail_polls = 0
        self._fail_after_delivery = 0
        self.delivered: dict[int, tuple[int, pb.TaskAssignment]] = {}  # id -> (em, assignment)
        self.acked: list[int] = []  # assignment ids acknowledged by successful calls, in order
        self.foreign_acks: list[pb.TaskAssignmentRecord] = []
        self.polls: list[Poll] = []
        self.heartbeats: list[tuple[float, int]] = []
        self.shutdowns: list[tuple[float, pb.ShutdownRequest]] = []
        self._server: _rpc.Server | None = None

    # -- server lifecycle ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeScheduler:
        """Serve on `port` (a free port the first time; the same port after a restart)."""
        assert self._server is None
        server = _rpc.make_server(f"127.0.0.1:{self.port}", max_workers=32)
        pb_grpc.add_SchedulerServiceServicer_to_server(self, server.grpc_server)
        server.start()
        self.port = server.port
        self._server = server
        return self

    def stop(self) -> None:
        """Go away like a crashed scheduler: open calls are cut off, the port is closed."""
        server, self._server = self._server, None
        if server is not None:
            server.grpc_server.stop(0).wait(10)
            server.executor.shutdown(wait=False, cancel_futures=True)
        with self._cond:
            self._cond.notify_all()

    # -- test controls --------------------------------------------------------------------------

    def assign(
        self, job_id: int, task_id: int, session_id: int, scheduler_id: int | None = None
    ) -> int:
        """Queue an assignment for the next poll; returns its assignment id."""
        with self._cond:
            self._next_id += 1
            aid = self._next_id
            self._pending.append(
                pb.TaskAssignment(
                    assignment_id=aid,
                    resource_group_id=1,
                    job_id=job_id,
                    task_id=_taskid.to_proto(task_id),
                    scheduler_id=self.scheduler_id if scheduler_id is None else scheduler_id,
                    session_id=session_id,
                )
            )
            self._cond.notify_all()
        return aid

    def assign_many(self, items: Iterable[tuple[int, int, int]]) -> list[int]:
        """Queue several (job, task, session) assignments at once, so that one poll hands them
        all out; returns their assignment ids."""
        with self._cond:
            ids = []
            for job_id, task_id, session_id in items:
                self._next_id += 1
                ids.append(self._next_id)
                self._pending.append(
                    pb.TaskAssignment(
                        assignment_id=self._next_id,
                        resource_group_id=1,
                        job_id=job_id,
                        task_id=_taskid.to_proto(task_id),
                        scheduler_id=self.scheduler_id,
                        session_id=session_id,
                    )
                )
            self._cond.notify_all()
        return ids

    def fail_polls(self, count: int) -> None:
        """Answer the next `count` polls with UNAVAILABLE (their acks are not taken)."""
        with self._cond:
            self._fail_polls = count

    def fail_polls_after_next_delivery(self, count: int) -> None:
        """Once the next assignment is handed out, fail the `count` polls that follow (so the
        acknowledgement of that assignment meets a scheduler outage)."""
        with self._cond:
            self._fail_after_delivery = count

    # -- queries --------------------------------------------------------------------------------

    def outstanding(self) -> set[int]:
        """Assignments handed out and not acknowledged."""
        with self._cond:
            return set(self.delivered) - set(self.acked)

    def was_delivered(self, aid: int) -> bool:
        with self._cond:
            return aid in self.delivered

    def is_acked(self, aid: int) -> bool:
        with self._cond:
            return aid in self.acked

    def heartbeat_count(self, em_id: int | None = None) -> int:
        with self._cond:
            return sum(1 for _, e in self.heartbeats if em_id is None or e == em_id)

    def shutdown_acks(self) -> list[int]:
        with self._cond:
            return [r.assignment_id for _, s in self.shutdowns for r in s.prev_assignments]

    # -- RPCs -----------------------------------------------------------------------------------

    def _take_acks(self, em_id: int, records: Iterable[pb.TaskAssignmentRecord]) -> list[int]:
        ids = []
        for r in records:
            if r.scheduler_id != self.scheduler_id:
                self.foreign_acks.append(r)
                continue
            ids.append(r.assignment_id)
            if r.assignment_id not in self.acked:
                self.acked.append(r.assignment_id)
        return ids

    def _poll(
        self,
        em_id: int,
        records: Iterable[pb.TaskAssignmentRecord],
        max_items: int,
        wait_ms: int,
        context: grpc.ServicerContext,
    ) -> list[pb.TaskAssignment]:
        records = list(records)
        with self._cond:
            if self._fail_polls > 0:
                self._fail_polls -= 1
                self.polls.append(
                    Poll(
                        time.monotonic(), em_id, [r.assignment_id for r in records], max_items, True
                    )
                )
                failed = True
            else:
                failed = False
        if failed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake scheduler: injected outage")
        with self._cond:
            poll = Poll(time.monotonic(), em_id, self._take_acks(em_id, records), max_items)
            self.polls.append(poll)
            deadline = time.monotonic() + min(wait_ms / 1000, _MAX_POLL_WAIT_S)
            while not self._pending and self._server is not None and context.is_active():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.1))
            if not context.is_active():
                return []
            out = []
            while self._pending and len(out) < max(1, max_items):
                a = self._pending.popleft()
                self.delivered[a.assignment_id] = (em_id, a)
                poll.delivered.append(a.assignment_id)
                out.append(a)
            if out and self._fail_after_delivery:
                self._fail_polls, self._fail_after_delivery = self._fail_after_delivery, 0
            return out

    def NextTasks(
        self, request: pb.NextTasksRequest, context: grpc.ServicerContext
    ) -> pb.NextTasksReply:
        out = self._poll(
            request.execution_manager_id,
            request.acks,
            request.max_items,
            request.wait_time_ms,
            context,
        )
        return pb.NextTasksReply(assignments=out)

    def NextTask(
        self, request: pb.NextTaskRequest, context: grpc.ServicerContext
    ) -> pb.NextTaskReply:
        acks = [request.prev_assignment] if request.HasField("prev_assignment") else []
        out = self._poll(request.execution_manager_id, acks, 1, request.wait_time_ms, context)
        if not out:
            return pb.NextTaskReply(no_task=pb.Void())
        return pb.NextTaskReply(assignment=out[0])

    def Heartbeat(
        self, request: pb.SchedulerHeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.Void:
        with self._cond:
            self.heartbeats.append((time.monotonic(), request.execution_manager_id))
        return pb.Void()

    def Shutdown(self, request: pb.ShutdownRequest, context: grpc.ServicerContext) -> pb.Void:
        with self._cond:
            self.shutdowns.append((time.monotonic(), request))
            self._take_acks(request.execution_manager_id, request.prev_assignments)
        return pb.Void()


# ---------------------------------------------------------------------------------------------
# Recording peers
# ---------------------------------------------------------------------------------------------


@dataclass
class PeerCall:
    """One call the EM made through a recorded peer; `done_seq` once it ended."""

    seq: int
    peer: str
    method: str
    request: Any
    reply: Any = None
    outcome: str = ""  # "ok", "cancelled" or the status code's name
    done_seq: int | None = None


class PeerRecorder:
    """One log for every call that the peers it wrapped forwarded, in the order the EM made
    them (`seq`) and they ended (`done_seq`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seq = 0
        self.calls: list[PeerCall] = []

    def wrap(self, peer: str, real: Any, methods: Iterable[str]) -> Any:
        """A peer with `methods` of `real`, each forwarded and recorded."""
        wrapped = type(f"Recording{peer.title()}", (), {})()
        for name in methods:
            setattr(wrapped, name, _RecordedMethod(self, peer, name, getattr(real, name)))
        return wrapped

    def of(self, method: str) -> list[PeerCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def _begin(self, peer: str, method: str, request: Any) -> PeerCall:
        with self._lock:
            self._seq += 1
            call = PeerCall(self._seq, peer, method, request)
            self.calls.append(call)
            return call

    def _end(self, call: PeerCall, outcome: str, reply: Any = None) -> None:
        with self._lock:
            self._seq += 1
            call.outcome, call.reply, call.done_seq = outcome, reply, self._seq


class _RecordedMethod:
    def __init__(self, recorder: PeerRecorder, peer: str, name: str, method: Any) -> None:
        self._recorder, self._peer, self._name, self._method = recorder, peer, name, method

    def __call__(self, request: Any, timeout: float | None = None) -> Any:
        call = self._recorder._begin(self._peer, self._name, request)
        try:
            reply = self._method(request, timeout=timeout)
        except grpc.RpcError as exc:
            self._recorder._end(call, exc.code().name)
            raise
        self._recorder._end(call, "ok", reply)
        return reply

    def future(self, request: Any, timeout: float | None = None) -> Any:
        call = self._recorder._begin(self._peer, self._name, request)
        future = self._method.future(request, timeout=timeout)

        def ended(f: Any) -> None:
            if f.cancelled():
                self._recorder._end(call, "cancelled")
            elif f.exception() is not None:
                self._recorder._end(call, f.exception().code().name)
            else:
                self._recorder._end(call, "ok", f.result())

        future.add_done_callback(ended)
        return future


# ---------------------------------------------------------------------------------------------
# A real scheduler process
# ---------------------------------------------------------------------------------------------

SCHEDULER_CONFIG = """
[scheduler]
dead_em_cutoff = 5.0
"""


class SchedulerProcess(ServiceProcess):
    def __init__(self, storage_address: str, workdir: Path) -> None:
        cfg = workdir / "scheduler.toml"
        cfg.write_text(SCHEDULER_CONFIG)
        super().__init__(
            "scheduler",
            [
                "scheduler",
                "--storage",
                storage_address,
                "--listen",
                "127.0.0.1:{port}",
                "--config",
                str(cfg),
            ],
            workdir,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
