"""Running a long-lived component: in the foreground, start it, announce readiness, stop cleanly
on SIGTERM/SIGINT (or when the component stops by itself) and return its exit code; its
Prometheus endpoint, which lives exactly as long as the component; the start-up errors an
operator must fix (a port in use); and, for a component started by a supervisor (LocalCluster),
stopping when that supervisor dies."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, start_http_server

from orbweaver import errors
from orbweaver._rpc import Security

log = logging.getLogger("orbweaver")

T = TypeVar("T")

# Set by LocalCluster in each component's environment (never on its command line): the read end
# of a pipe whose write end only the supervisor holds, and the supervisor's pid when it started
# the component from its main thread.
LIFELINE_FD_ENV = "ORBWEAVER_LIFELINE_FD"
PARENT_PID_ENV = "ORBWEAVER_PARENT_PID"
# How long a component whose supervisor died may take to stop cleanly before it kills itself.
ORPHAN_STOP_GRACE_S = 60.0
_PR_SET_PDEATHSIG = 1

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})


class StartupError(errors.Unavailable):
    """A component cannot start because of its environment or configuration (a port in use, a
    database held by another storage service): a message for the operator, not a bug."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(f"{component}: {reason}" if component else reason)
        self.component = component
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------


def split_host_port(address: str) -> tuple[str, int] | None:
    """`host:port` (IPv6 hosts in brackets) as `(host, port)`; None for anything else (e.g. a
    gRPC `unix:` address), which the checks below leave to gRPC."""
    if address.startswith(("unix:", "unix-abstract:")):
        return None
    host, sep, port = address.rpartition(":")
    if not sep:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return host, int(port)
    except ValueError:
        return None


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def metrics_host_for(listen: str | None) -> str:
    """The default metrics host of a component listening on `listen`: the same host (a service
    reachable only from this machine keeps its metrics private too); 127.0.0.1 without one."""
    parts = split_host_port(listen) if listen else None
    if parts is None:
        return "127.0.0.1"
    host = parts[0]
    return "0.0.0.0" if host in ("", "*") else host


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only ever means this machine."""
    if host in _WILDCARD_HOSTS:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def bind_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on `host:port` now ("address already in use", ...), found
    by binding a throw-away socket the way gRPC and the metrics server bind theirs
    (SO_REUSEADDR: a closed connection's TIME_WAIT is no conflict, a listener is); None if
    nothing is in the way."""
    try:
        infos = socket.getaddrinfo(
            None if host in ("", "*") else host,
            port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
    except socket.gaierror as exc:
        return f"cannot resolve {host!r} ({_reason(exc)})"
    problems: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    # Like a dual-stack gRPC listener on [::]: IPv4 users of the port conflict.
                    with contextlib.suppress(OSError):
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                probe.bind(sockaddr)
        except OSError as exc:
            problems.append(exc)
    in_use = [p for p in problems if p.errno == errno.EADDRINUSE]
    if in_use:
        return _reason(in_use[0])
    if problems and len(problems) == len(infos):  # gRPC gives up only when no address binds
        return _reason(problems[0])
    return None


def check_listen(component: str, address: str) -> None:
    """Refuse at once, with a readable reason, an address `component` cannot listen on."""
    parts = split_host_port(address)
    if parts is None:
        return
    problem = bind_problem(*parts)
    if problem is not None:
        raise StartupError(component, f"cannot listen on {address}: {problem}")


def check_metrics(component: str, host: str, port: int) -> None:
    """Like `check_listen`, for the metrics endpoint (checked before anything else starts)."""
    problem = bind_problem(host, port) if port else None
    if problem is not None:
        where = join_host_port(host, port)
        raise StartupError(component, f"cannot serve metrics on {where}: {problem}")


def bind_server(component: str, address: str, make: Callable[[], T]) -> T:
    """`make()` a gRPC server listening on `address`; a failure to bind (gRPC raises a bare
    RuntimeError, or returns port 0) becomes a `StartupError` naming the address and why."""
    check_listen(component, address)
    try:
        return make()
    except (RuntimeError, errors.Unavailable) as exc:
        parts = split_host_port(address)
        problem = bind_problem(*parts) if parts is not None else None
        reason = problem or f"gRPC could not bind it ({exc})"
        raise StartupError(component, f"cannot listen on {address}: {reason}") from exc


def warn_if_exposed(component: str, listen: str, security: Security) -> None:
    """Log a warning when `component` serves a non-loopback address without authentication."""
    if security.token or (security.tls is not None and security.tls.ca_file is not None):
        return
    parts = split_host_port(listen)
    if parts is None or is_loopback(parts[0]):
        return
    log.warning(
        f"{component} listens on {listen} without a cluster token: anyone who can reach that "
        "address can pose as a cluster component (take ready work, register and report task "
        "instances, see task inputs); set ORBWEAVER_TOKEN (or --token-file FILE, or `token` in "
        "the config file) on every component (clients do not need it)",
        extra={"listen": listen},
    )


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


class MetricsServer:
    """A component's Prometheus endpoint (`/metrics` on `host:port`; port 0 picks a free one).
    `close()` frees the port, so a component stopped inside a longer-lived process (tests, an
    application embedding a worker) leaves nothing listening. The default host is loopback:
    metrics reach further only when asked to."""

    def __init__(
        self,
        port: int,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        *,
        component: str = "",
    ) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            where = join_host_port(host, port)
            raise StartupError(
                component, f"cannot serve metrics on {where}: {_reason(exc)}"
            ) from exc
        self.host = host

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


# ---------------------------------------------------------------------------------------------
# Running in the foreground
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Dying with the supervisor
# ---------------------------------------------------------------------------------------------


def follow_parent() -> None:
    """In a component started by LocalCluster: stop (SIGTERM to itself, the clean stop path)
    when the supervisor dies, however it dies, and kill itself if that stop hangs.

    Two mechanisms, because neither covers every case alone:

    * a watchdog thread reading the inherited lifeline pipe: it reads EOF once no process holds
      the write end, i.e. when the supervisor is gone — whichever of its threads started us;
    * PR_SET_PDEATHSIG (Linux), only when the supervisor started us from its main thread: the
      kernel signals us when the *thread* that forked us exits, which for the main thread means
      the process; it also covers a supervisor whose write end leaked into a forked child.

    The variables are removed from the environment so that processes this one starts (a
    worker's executors) do not act on them."""
    fd_text = os.environ.pop(LIFELINE_FD_ENV, None)
    parent_text = os.environ.pop(PARENT_PID_ENV, None)
    if parent_text:
        _set_parent_death_signal(signal.SIGTERM)
        if str(os.getppid()) != parent_text:
            # The supervisor died before the signal was armed (the lifeline reads EOF at once),
            # or a wrapper process sits in between: the signal would follow the wrong process.
            _set_parent_death_signal(0)
    if fd_text:
        try:
            fd = int(fd_text)
            os.set_inheritable(fd, False)
        except (ValueError, OSError) as exc:
            log.warning("cannot watch the supervisor's lifeline %r: %s", fd_text, exc)
            return
        threading.Thread(
            target=_watch_lifeline, args=(fd,), name="orbweaver-lifeline", daemon=True
        ).start()


def _set_parent_death_signal(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # the pipe still covers it
        log.debug("PR_SET_PDEATHSIG is unavailable")


def _watch_lifeline(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 64)
        except OSError as exc:
            log.warning("cannot watch the supervisor's lifeline: %s", exc)
            return
        if not data:
            break
    _orphan_stop("the process that started it is gone (its lifeline pipe closed)")


def _orphan_stop(why: str) -> None:
    log.warning(f"stopping: {why}", extra={"grace_s": ORPHAN_STOP_GRACE_S})
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_STOP_GRACE_S)
    log.error("did not stop within the grace period after its supervisor died; killing itself")
    os.kill(os.getpid(), signal.SIGKILL)
