"""Real service processes for tests: start, SIGKILL, restart on the same port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc

T = TypeVar("T")

# Short intervals so GC, dead-EM and retention behaviour shows up within a test.
FAST_CONFIG = """
[storage]
instance_gc_interval = 0.2
em_stale_cutoff = 2.0
job_cache_gc_interval = 0.2
job_cache_retention = 600.0
recovery_page_size = 100
"""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def one_leader(leaders: Callable[[], list[T]], timeout: float, interval: float) -> T:
    """The one storage `leaders()` names, once exactly one leads (failover clusters)."""
    found: list[T] = []

    def exactly_one() -> bool:
        found[:] = leaders()
        return len(found) == 1

    try:
        wait_until(exactly_one, timeout=timeout, interval=interval, what="exactly one leader")
    except AssertionError:
        raise AssertionError(f"{len(found)} storages lead after {timeout} s: {found}") from None
    return found[0]


def child_env() -> dict[str, str]:
    """This environment with the checkout on PYTHONPATH: what service and client children get."""
    env = dict(os.environ)
    repo_python = str(Path(__file__).resolve().parents[2] / "python")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [repo_python, env.get("PYTHONPATH", "")] if p)
    env.setdefault("ORBWEAVER_LOG_LEVEL", "INFO")
    return env


class ServiceProcess:
    """One `python -m orbweaver <component>` child process; `command_prefix` runs it under
    another command that execs it, e.g. `ip netns exec NS` (a host of a namespace network)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.args = args
        self.command_prefix = list(command_prefix)
        self.workdir = workdir
        self.env = {**child_env(), **(env or {})}
        self.popen: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self.log_path = workdir / f"{name}.log"

    def start(self, timeout: float = 60.0) -> None:
        ready = self.workdir / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        args = [a.replace("{port}", str(self.port)) for a in self.args]
        command = [*self.command_prefix, sys.executable, "-m", "orbweaver", *args]
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [*command, "--ready-file", str(ready)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not ready.exists():
            code = self.popen.poll()
            if code is not None:
                raise AssertionError(f"{self.name} exited with {code}:\n{self.logs()[-5000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(
                    f"{self.name} not ready in {timeout} s:\n{self.logs()[-5000:]}"
                )
            time.sleep(0.02)
        self.port = int(json.loads(ready.read_text())["port"])

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(30)

    def terminate(self, timeout: float = 30.0) -> int | None:
        if self.popen is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def restart(self) -> None:
        self.kill()
        self.start()


def stubs_for(ch: grpc.Channel) -> Any:
    """Every storage service's stub on one channel."""

    class Stubs:
        jobs = pb_grpc.JobOrchestrationServiceStub(ch)
        instances = pb_grpc.TaskInstanceManagementServiceStub(ch)
        queue = pb_grpc.InboundQueueServiceStub(ch)
        groups = pb_grpc.ResourceGroupManagementServiceStub(ch)
        liveness = pb_grpc.ExecutionManagerLivenessServiceStub(ch)
        schedulers = pb_grpc.SchedulerRegistrationServiceStub(ch)
        session = pb_grpc.SessionManagementServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        channel_of: Any = None

    return Stubs


class StorageProcess(ServiceProcess):
    """`orbweaver storage` on `host` (loopback unless given; `command_prefix` as for
    `ServiceProcess`)."""

    def __init__(
        self,
        db_url: str,
        workdir: Path,
        config: str = FAST_CONFIG,
        env: dict[str, str] | None = None,
        extra: list[str] | None = None,
        host: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.host = host
        cfg = workdir / "storage.toml"
        cfg.write_text(config)
        super().__init__(
            "storage",
            [
                "storage",
                "--db",
                db_url,
                "--listen",
                f"{host}:{{port}}",
                "--config",
                str(cfg),
                *(extra or []),
            ],
            workdir,
            env,
            command_prefix,
        )
        self._channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return self._channel

    def stubs(self) -> Any:
        return stubs_for(self.channel())

    def serving(self) -> bool:
        try:
            reply = self.stubs().health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
