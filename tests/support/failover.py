"""A cluster of real processes on loopback with several storages on one MariaDB database: one
leads, the others stand by; the scheduler, the worker and clients are given every storage's
address (`a:1,b:2`) and follow the leader.

Faults, by storage index: :meth:`FailoverCluster.kill` (SIGKILL), :meth:`pause` /
:meth:`resume` (SIGSTOP / SIGCONT: a leader that goes silent, as one cut off from the network
does, and comes back), :meth:`restart`. :meth:`role` reads a storage's health service.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

import orbweaver as ow
from support.liveness import SCHEDULER_CONFIG, STORAGE_CONFIG
from support.procs import ServiceProcess, StorageProcess, one_leader

# A short lease: failover within seconds in tests.
FAILOVER_STORAGE_CONFIG = STORAGE_CONFIG + "lease = 1.5\nvisibility_timeout = 5.0\n"


class FailoverCluster:
    def __init__(
        self,
        db_url: str,
        workdir: Path,
        tasks_dir: Path,
        *,
        storages: int = 2,
        processes: int = 2,
        env: dict[str, str] | None = None,
        storage_config: str = FAILOVER_STORAGE_CONFIG,
    ) -> None:
        self.db_url = db_url
        self.workdir = workdir
        self.tasks_dir = tasks_dir
        self.processes = processes
        self.token = secrets.token_hex(16)
        self.operator_token = secrets.token_hex(16)
        self.env = dict(env or {})
        self.storages = [
            StorageProcess(
                db_url,
                self._dir(f"storage{i + 1}"),
                config=storage_config,
                env={
                    "ORBWEAVER_TOKEN": self.token,
                    "ORBWEAVER_OPERATOR_TOKEN": self.operator_token,
                },
            )
            for i in range(storages)
        ]
        self.scheduler: ServiceProcess | None = None
        self.worker: ServiceProcess | None = None
        self._group: ow.ResourceGroup | None = None

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def address(self) -> str:
        """Every storage's address: what clients and services are given."""
        return ",".join(s.address for s in self.storages)

    def start(self) -> FailoverCluster:
        try:
            for storage in self.storages:  # the first leads, the others stand by
                storage.start()
            sched_cfg = self._dir("scheduler") / "scheduler.toml"
            sched_cfg.write_text(SCHEDULER_CONFIG)
            self.scheduler = ServiceProcess(
                "scheduler",
                ["scheduler", "--storage", self.address, "--listen", "127.0.0.1:{port}",
                 "--config", str(sched_cfg)],
                self._dir("scheduler"),
                env={"ORBWEAVER_TOKEN": self.token},
            )  # fmt: skip
            self.scheduler.start()
            scheduler_address = f"127.0.0.1:{self.scheduler.port}"
            self.worker = ServiceProcess(
                "worker",
                ["worker", "--storage", self.address, "--scheduler", scheduler_address,
                 "--tasks-dir", str(self.tasks_dir), "--processes", str(self.processes),
                 "--ip", "127.0.0.1"],
                self._dir("worker"),
                env={"ORBWEAVER_TOKEN": self.token,
                     "ORBWEAVER_EXECUTOR_ENV": ",".join(self.env), **self.env},
            )  # fmt: skip
            self.worker.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in [self.worker, self.scheduler, *self.storages]:
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                if proc.popen is not None and proc.alive:
                    os.killpg(proc.popen.pid, signal.SIGCONT)  # a paused one must hear SIGTERM
            proc.terminate(15)
            if isinstance(proc, StorageProcess):
                proc.close()

    def __enter__(self) -> FailoverCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, address: str | None = None, timeout: float = 120.0) -> ow.Client:
        """A client of the group `failover` (made on first use), given every storage's address
        (or `address`)."""
        if self._group is None:
            with ow.Client(self.address, operator_token=self.operator_token) as operator:
                self._group = operator.add_resource_group("failover", "failover-password")
        return ow.Client(address or self.address, resource_group=self._group, timeout=timeout)

    # -- roles --

    def role(self, index: int) -> str:
        """`leader`, `standby` or `down`, as storage `index`'s health service says."""
        storage = self.storages[index]
        if not storage.alive:
            return "down"
        for role in ("leader", "standby"):
            try:
                reply = storage.stubs().health.Check(
                    health_pb2.HealthCheckRequest(service=f"orbweaver.storage.{role}"), timeout=5
                )
            except grpc.RpcError:
                return "down"
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return role
        return "down"

    def leaders(self) -> list[int]:
        return [i for i in range(len(self.storages)) if self.role(i) == "leader"]

    def leader(self, timeout: float = 60.0) -> int:
        """The index of the one storage that leads, once exactly one does."""
        return one_leader(self.leaders, timeout, interval=0.1)

    # -- faults --

    def kill(self, index: int) -> None:
        self.storages[index].kill()

    def pause(self, index: int) -> None:
        popen = self.storages[index].popen
        assert popen is not None
        os.killpg(popen.pid, signal.SIGSTOP)

    def resume(self, index: int) -> None:
        popen = self.storages[index].popen
        assert popen is not None
        os.killpg(popen.pid, signal.SIGCONT)

    def restart(self, index: int) -> None:
        self.storages[index].restart()

    def logs(self) -> str:
        procs = [*self.storages, self.scheduler, self.worker]
        return "\n".join(f"--- {p.name} ({p.workdir.name})\n{p.logs()[-4000:]}"
                         for p in procs if p is not None)  # fmt: skip
