"""Serve the dashboard with uvicorn (`orbweaver dashboard`)."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from orbweaver import errors
from orbweaver._rpc import TlsConfig
from orbweaver.dashboard.app import DashboardSettings, create_app
from orbweaver.dashboard.storage import StorageReader

__all__ = ["bind", "serve"]

log = logging.getLogger("orbweaver.dashboard")


def bind(listen: str) -> socket.socket:
    """A listening socket on `host:port` (port 0: any free port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise errors.InvalidArgument(f"--listen must be HOST:PORT, got {listen!r}")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port_text)))
    except OSError as exc:
        sock.close()
        raise errors.InvalidArgument(f"cannot listen on {listen}: {exc}") from exc
    sock.listen(128)
    return sock


class _OnStartup:
    """Runs `ready` once the ASGI lifespan starts (the server is about to accept)."""

    def __init__(self, app: ASGIApp, ready: Callable[[], None]) -> None:
        self.app = app
        self.ready = ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.ready()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def serve(
    storage: str,
    sock: socket.socket,
    *,
    read_only: bool = False,
    https: tuple[Path, Path] | None = None,
    storage_tls: TlsConfig | None = None,
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Serve until SIGTERM / SIGINT. `https`: (certificate, key) PEM files."""
    reader = StorageReader(storage, storage_tls)
    app = create_app(reader, DashboardSettings(read_only=read_only, https=https is not None))
    options: dict[str, Any] = {}
    if https is not None:
        options.update(ssl_certfile=str(https[0]), ssl_keyfile=str(https[1]))
    config = uvicorn.Config(
        _OnStartup(app, ready),
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        **options,
    )
    server = uvicorn.Server(config)
    host, port = sock.getsockname()[:2]
    scheme = "https" if https else "http"
    log.info("dashboard serving", extra={"url": f"{scheme}://{host}:{port}/", "storage": storage})
    try:
        server.run(sockets=[sock])
    finally:
        reader.close()
        with contextlib.suppress(OSError):
            sock.close()
