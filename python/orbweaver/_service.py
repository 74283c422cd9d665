"""Running a long-lived component: in the foreground, start it, announce readiness, stop cleanly
on SIGTERM/SIGINT (or when the component stops by itself) and return its exit code; and its
Prometheus endpoint, which lives exactly as long as the component."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger("orbweaver")


class MetricsServer:
    """A component's Prometheus endpoint (`/metrics` on `host:port`; port 0 picks a free one).
    `close()` frees the port, so a component stopped inside a longer-lived process (tests, an
    application embedding a worker) leaves nothing listening."""

    def __init__(self, port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool:
        """True once the service has stopped."""


def run_until_signal(service: Service, on_ready: Callable[[], None] | None = None) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping on signal", extra={"signal": signal.Signals(signum).name})
        stop.set()
        # A service still starting (e.g. retrying registration) must give up promptly.
        request_stop = getattr(service, "request_stop", None)
        if request_stop is not None:
            request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.start()
    if on_ready is not None and not stop.is_set():  # a start cut short by a signal is not ready
        on_ready()
    while not stop.wait(0.2):
        if service.wait(0):
            break
    service.stop()
    code = getattr(service, "exit_code", 0)
    return int(code() if callable(code) else code)
