"""Taps: transparent recording gRPC proxies in front of REAL service processes.

A test points the component under test at the tap instead of the service. The tap forwards every
unary call unchanged (bytes and credentials in, bytes out, status codes and client cancellation
preserved) and
keeps a log of what was called, with which request and how it ended, so the test sees exactly
what the service saw and in which order. It can also play faults: answer the next calls of a
method with an error instead of forwarding them (`fail_next`), forward a call and then lose its
reply (`lose_reply_next`), or keep a call in flight until released (`hold_next`).
`StorageTap` (registrations, reports) and `SchedulerTap` (polls, deliveries, acks, heartbeats,
shutdowns) add the queries for their service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import grpc

from orbweaver import _rpc
from orbweaver._proto import orbweaver_pb2 as pb


def _request_type(method: str) -> Any:
    """The request message class of ``/orbweaver.v1.Service/Method``."""
    _, service, name = method.split("/")
    desc = pb.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[-1]].methods_by_name[name]
    return getattr(pb, desc.input_type.name)


@dataclass
class TapCall:
    seq: int
    at: float
    method: str  # short name, e.g. "RegisterTaskInstances"
    request: Any
    code: grpc.StatusCode | None = None  # None while in flight
    reply: bytes | None = None
    done: threading.Event = field(default_factory=threading.Event)


class GrpcTap(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Forwards every unary call to `target` and logs it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = _rpc.make_channel(target)
        self._lock = threading.Lock()
        self.calls: list[TapCall] = []
        self._faults: dict[str, list[grpc.StatusCode]] = {}
        self._holds: dict[str, list[threading.Event]] = {}
        self._lost_replies: dict[str, list[grpc.StatusCode]] = {}
        self._server = _rpc.make_server("127.0.0.1:0", max_workers=64)
        self._server.grpc_server.add_generic_rpc_handlers((self,))
        self._server.start()
        self.port = self._server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.grpc_server.stop(0).wait(10)
        self._server.executor.shutdown(wait=False, cancel_futures=True)
        self._channel.close()

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith("/orbweaver.v1.") or method.endswith("/Calls"):
            # No call streams through a tap (answered UNIMPLEMENTED): callers make every call
            # unary, and the tap sees each one.
            return None
        forward = self._channel.unary_unary(method)
        request_type = _request_type(method)
        short = method.rsplit("/", 1)[-1]

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                call = TapCall(
                    len(self.calls), time.monotonic(), short, request_type.FromString(request)
                )
                self.calls.append(call)
            with self._lock:
                faults = self._faults.get(short)
                fault = faults.pop(0) if faults else None
            if fault is not None:
                call.code = fault
                call.done.set()
                context.abort(fault, f"tap: injected {fault.name} for {short}")
            with self._lock:
                holds = self._holds.get(short)
                hold = holds.pop(0) if holds else None
            if hold is not None:
                hold.wait(60)
                if not context.is_active():  # the caller gave up: the service never sees it
                    call.code = grpc.StatusCode.CANCELLED
                    call.done.set()
                    return b""
            remaining = context.time_remaining()
            # Credentials travel as metadata: forward the caller's (not the transport's own).
            metadata = [
                (key, value)
                for key, value in context.invocation_metadata()
                if not key.startswith((":", "grpc-")) and key != "user-agent"
            ]
            future = forward.future(
                request, timeout=remaining if remaining else 30, metadata=metadata
            )
            # A caller that goes away cancels the forwarded call too: the service must see the
            # cancellation (the scheduler requeues what a vanished long poll would have taken).
            context.add_callback(future.cancel)
            try:
                reply: bytes = future.result()
            except grpc.FutureCancelledError:
                call.code = grpc.StatusCode.CANCELLED
                call.done.set()
                return b""
            except grpc.RpcError as exc:
                call.code = exc.code()
                call.done.set()
                context.abort(exc.code(), exc.details() or "")
            with self._lock:
                lost = self._lost_replies.get(short)
                lose = lost.pop(0) if lost else None
            call.reply = reply  # what the service answered, even when the caller never gets it
            call.code = grpc.StatusCode.OK if lose is None else lose
            call.done.set()
            if lose is not None:
                context.abort(lose, f"tap: reply of {short} lost ({lose.name})")
            return reply

        return grpc.unary_unary_rpc_method_handler(handle)

    def fail_next(self, method: str, *codes: grpc.StatusCode) -> None:
        """Answer the next calls of `method` (short name) with these codes, one call each,
        without forwarding them to the service."""
        with self._lock:
            self._faults.setdefault(method, []).extend(codes)

    def lose_reply_next(self, method: str, *codes: grpc.StatusCode) -> None:
        """Forward the next calls of `method`, then answer each caller with one of these codes
        instead of the service's reply: a reply lost on the way back."""
        with self._lock:
            self._lost_replies.setdefault(method, []).extend(codes)

    def hold_next(self, method: str) -> threading.Event:
        """Keep the next call of `method` in flight at the tap until the returned event is set;
        then forward it, unless its caller gave up meanwhile."""
        release = threading.Event()
        with self._lock:
            self._holds.setdefault(method, []).append(release)
        return release

    # -- queries --------------------------------------------------------------------------------

    def of(self, method: str, where: Callable[[TapCall], bool] | None = None) -> list[TapCall]:
        with self._lock:
            calls = [c for c in self.calls if c.method == method]
        return [c for c in calls if where is None or where(c)]

    def count(self, method: str) -> int:
        return len(self.of(method))


class StorageTap(GrpcTap):
    """A tap in front of a storage process."""

    def registrations_of(self, job_id: int) -> list[TapCall]:
        return self.of(
            "RegisterTaskInstances", lambda c: any(i.job_id == job_id for i in c.request.items)
        )

    def reports_of(self, job_id: int) -> list[TapCall]:
        return self.of(
            "ReportTaskOutcomes", lambda c: any(o.job_id == job_id for o in c.request.outcomes)
        )


class SchedulerTap(GrpcTap):
    """A tap in front of a real scheduler process: what it handed out and what came back."""

    def polls(self, em_id: int | None = None) -> list[TapCall]:
        return self.of(
            "NextTasks", lambda c: em_id is None or c.request.execution_manager_id == em_id
        )

    def delivered(self, job_id: int | None = None) -> dict[int, pb.TaskAssignment]:
        """Assignments that reached the EM (in the replies of answered polls), by id."""
        out = {}
        for call in self.polls():
            if call.code == grpc.StatusCode.OK and call.reply:
                for a in pb.NextTasksReply.FromString(call.reply).assignments:
                    if job_id is None or a.job_id == job_id:
                        out[a.assignment_id] = a
        return out

    def acked(self) -> set[int]:
        """Assignment ids the scheduler accepted an acknowledgement for: in a poll or in a
        Shutdown that went through."""
        ok = [c for c in self.polls() + self.shutdowns() if c.code == grpc.StatusCode.OK]
        return {
            r.assignment_id
            for c in ok
            for r in (c.request.acks if c.method == "NextTasks" else c.request.prev_assignments)
        }

    def outstanding(self) -> set[int]:
        return set(self.delivered()) - self.acked()

    def heartbeats(self, em_id: int | None = None) -> list[TapCall]:
        return self.of(
            "Heartbeat", lambda c: em_id is None or c.request.execution_manager_id == em_id
        )

    def shutdowns(self) -> list[TapCall]:
        return self.of("Shutdown")
