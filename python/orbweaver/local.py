"""`LocalCluster`: a whole Orbweaver cluster on this machine, as real processes.

It starts the storage service (embedded SQLite unless `db=` names another database), a scheduler
and one execution manager with `workers` executor processes, each as its own child process
running the same code as `orbweaver storage|scheduler|worker`. The components authenticate each
other with a random cluster token. The cluster's client acts as the operator, with a random
operator token only the storage process is given; the cluster creates a resource group
("default", with a random password when it is new) for the jobs the client submits.

Secrets (the tokens, a database URL with a password) reach the components through their
environment, never their command line, which every local user can read. The components die with
the process that started them, however it dies: each inherits the read end of a "lifeline" pipe
whose write end only this process holds, and stops when it reads EOF; when started from the main
thread they also get SIGTERM from the kernel when this process exits (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from orbweaver import errors
from orbweaver._service import LIFELINE_FD_ENV, PARENT_PID_ENV, StartupError
from orbweaver.client import Client, ResourceGroup
from orbweaver.storage.db.url import ENV_DB_URL
from orbweaver.tdl.task import registered_tasks_dirs

if TYPE_CHECKING:
    from orbweaver._client_core import ClientCore
    from orbweaver.async_client import AsyncClient

C = TypeVar("C", bound="ClientCore[Any]")

log = logging.getLogger("orbweaver.local")

Component = Literal["storage", "scheduler", "worker", "dashboard"]
DEFAULT_GROUP = "default"


@dataclass(slots=True)
class _Process:
    name: Component
    args: list[str]
    popen: subprocess.Popen[bytes]
    ready_file: Path
    log_file: IO[bytes]
    port: int = 0


def _default_tasks_dir() -> Path:
    """Where the cluster's executors import tasks from when `tasks_dir` is not given: the
    directory of the module that defines the tasks, when the tasks imported so far all live in
    one; otherwise the directory of the module that creates the cluster."""
    dirs = registered_tasks_dirs()
    if len(dirs) == 1:
        return dirs[0]
    return _caller_dir()


def _caller_dir() -> Path:
    """The directory of the module that created the cluster: the first frame outside
    Orbweaver (and `contextlib`, for `with` blocks)."""
    for frame in inspect.stack():
        module = inspect.getmodule(frame.frame)
        name = module.__name__ if module is not None else ""
        if name.split(".")[0] in ("orbweaver", "contextlib"):
            continue
        filename = frame.frame.f_globals.get("__file__")
        if filename:
            return Path(filename).resolve().parent
        break
    return Path.cwd()


class LocalCluster:
    """Run storage, scheduler and an execution manager locally.

    >>> with LocalCluster(workers=2) as cluster:
    ...     job = cluster.client().submit(graph, [3, 4])
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        db: str | None = None,
        tasks_dir: str | Path | None = None,
        listen: str = "127.0.0.1:0",
        token: str | None = None,
        operator_token: str | None = None,
        start_timeout: float = 60.0,
        log_dir: str | Path | None = None,
        storage_args: list[str] | None = None,
        scheduler_args: list[str] | None = None,
        worker_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        metrics_port: int | None = None,
        dashboard: str | None = None,
        dashboard_args: list[str] | None = None,
    ) -> None:
        """`metrics_port`: serve Prometheus metrics, the storage service's on this port, the
        scheduler's on the next and the worker's on the one after. `dashboard`: also serve the
        web dashboard on this `host:port` (port 0: any free port; see `dashboard_url`)."""
        if workers < 1:
            raise ValueError("LocalCluster needs at least one worker process")
        if metrics_port is not None and not 0 < metrics_port <= 65533:
            raise ValueError(f"metrics_port must be in 1..65533, got {metrics_port}")
        self.metrics_port = metrics_port
        self.workers = workers
        self.tasks_dir = Path(tasks_dir).resolve() if tasks_dir else _default_tasks_dir()
        self.listen = listen
        self.token = token or secrets.token_urlsafe(24)
        self.operator_token = operator_token or secrets.token_urlsafe(24)
        self.start_timeout = start_timeout
        self._tmp = Path(tempfile.mkdtemp(prefix="orbweaver-local-"))
        self.db_url = db or f"sqlite:///{self._tmp / 'jobs.db'}"
        self.log_dir = Path(log_dir) if log_dir else self._tmp / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._extra_args: dict[Component, list[str]] = {
            "storage": list(storage_args or []),
            "scheduler": list(scheduler_args or []),
            "worker": list(worker_args or []),
            "dashboard": list(dashboard_args or []),
        }
        self.dashboard = dashboard
        self._env = {**os.environ, **(env or {}), "ORBWEAVER_TOKEN": self.token}
        # Client credentials of this process are not the components' business.
        for name in ("ORBWEAVER_OPERATOR_TOKEN", "ORBWEAVER_PASSWORD", "ORBWEAVER_RESOURCE_GROUP"):
            self._env.pop(name, None)
        # `env` is meant for the tasks too: allow it through to the executors, which otherwise
        # see only a minimal environment (secret ORBWEAVER_* variables never pass).
        allow = [self._env.get("ORBWEAVER_EXECUTOR_ENV", ""), *(env or {})]
        self._env["ORBWEAVER_EXECUTOR_ENV"] = ",".join(filter(None, allow))
        # Children import orbweaver exactly as this process does.
        self._env["PYTHONPATH"] = os.pathsep.join(
            p
            for p in [str(Path(__file__).resolve().parent.parent), self._env.get("PYTHONPATH", "")]
            if p
        )
        self._procs: dict[Component, _Process] = {}
        self._lifeline: tuple[int, int] | None = None  # (read end, write end)
        self._client: Client | None = None
        self._group: ResourceGroup | None = None
        self._storage_port = 0
        self._scheduler_port = 0
        self._dashboard_port = 0

    # -- addresses ------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """`host:port` of the storage service (what clients connect to)."""
        return f"127.0.0.1:{self._storage_port}"

    @property
    def scheduler_address(self) -> str:
        return f"127.0.0.1:{self._scheduler_port}"

    @property
    def dashboard_url(self) -> str | None:
        """Where the dashboard serves (None without `dashboard`)."""
        if not self.dashboard or not self._dashboard_port:
            return None
        host = self.dashboard.rpartition(":")[0] or "127.0.0.1"
        return f"http://{host}:{self._dashboard_port}/"

    @property
    def metrics_ports(self) -> dict[Component, int]:
        """Where each component serves its metrics (empty without `metrics_port`)."""
        if self.metrics_port is None:
            return {}
        names: tuple[Component, ...] = ("storage", "scheduler", "worker")
        return {name: self.metrics_port + i for i, name in enumerate(names)}

    @property
    def resource_group(self) -> ResourceGroup:
        if self._group is None:
            raise RuntimeError("the cluster is not started")
        return self._group

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self.start_component("storage")
            self.start_component("scheduler")
            self.start_component("worker")
            if self.dashboard:
                self.start_component("dashboard")
            self._client = self.new_client()
            self._group = self._default_group(self._client)
            self._client.default_resource_group = self._group
        except BaseException:
            self.stop()
            raise

    def _default_group(self, client: Client) -> ResourceGroup:
        try:
            return client.add_resource_group(DEFAULT_GROUP, secrets.token_urlsafe(16))
        except errors.AlreadyExists:
            # A database kept from an earlier run: the operator acts within it as it is.
            return client.resource_group(DEFAULT_GROUP)

    def new_client(self, *, operator: bool = True, **kwargs: object) -> Client:
        """A new client of this cluster, refusing a graph whose tasks the cluster's executors
        could not import. With `operator` (the default) it holds the operator token and submits
        to the default resource group; without, pass `resource_group=` (and `password=`)."""
        return self._made(Client, operator, kwargs)

    def async_client(self, *, operator: bool = True, **kwargs: object) -> AsyncClient:
        """A new `AsyncClient` of this cluster, as `new_client` makes a `Client`: ``async with
        cluster.async_client() as client`` (within one event loop)."""
        from orbweaver.async_client import AsyncClient

        return self._made(AsyncClient, operator, kwargs)

    def _made(self, cls: type[C], operator: bool, kwargs: dict[str, object]) -> C:
        kwargs.setdefault("tasks_dir", self.tasks_dir)
        if operator:
            kwargs.setdefault("operator_token", self.operator_token)
        client = cls(self.address, **kwargs)  # type: ignore[arg-type]
        if operator and self._group is not None and "resource_group" not in kwargs:
            client._set_default_group(self._group)
        return client

    def client(self) -> Client:
        """The cluster's client: the operator, submitting to the default resource group."""
        if self._client is None:
            raise RuntimeError("the cluster is not started")
        return self._client

    def _command(self, name: Component, ready_file: Path) -> list[str]:
        py = [sys.executable, "-m", "orbweaver"]
        if name == "storage":
            listen = f"127.0.0.1:{self._storage_port}" if self._storage_port else self.listen
            args = [*py, "storage", "--listen", listen]  # the database URL: in its environment
        elif name == "scheduler":
            listen = f"127.0.0.1:{self._scheduler_port}"
            args = [*py, "scheduler", "--storage", self.address, "--listen", listen]
        elif name == "dashboard":
            listen = (
                f"{(self.dashboard or '').rpartition(':')[0]}:{self._dashboard_port}"
                if self._dashboard_port
                else self.dashboard or "127.0.0.1:0"
            )
            args = [*py, "dashboard", "--storage", self.address, "--listen", listen]
        else:
            args = [
                *py,
                "worker",
                "--storage",
                self.address,
                "--scheduler",
                self.scheduler_address,
                "--tasks-dir",
                str(self.tasks_dir),
                "--processes",
                str(self.workers),
            ]
        if name in self.metrics_ports:
            args += ["--metrics-port", str(self.metrics_ports[name])]
        return [*args, "--ready-file", str(ready_file), *self._extra_args[name]]

    def start_component(self, name: Component) -> None:
        """Start (or restart, on the same port) one component and wait until it is ready."""
        old = self._procs.get(name)
        if old is not None and old.popen.poll() is None:
            raise RuntimeError(f"{name} is already running")
        ready_file = self._tmp / f"{name}.ready"
        ready_file.unlink(missing_ok=True)
        log_file = (self.log_dir / f"{name}.log").open("ab")
        args = self._command(name, ready_file)
        lifeline = self._lifeline_fd()
        popen = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=self._child_env(name, lifeline),
            start_new_session=True,
            pass_fds=(lifeline,),
        )
        proc = _Process(name, args, popen, ready_file, log_file)
        self._procs[name] = proc
        proc.port = self._wait_ready(proc)
        if name == "storage":
            self._storage_port = proc.port
        elif name == "scheduler":
            self._scheduler_port = proc.port
        elif name == "dashboard":
            self._dashboard_port = proc.port

    def _lifeline_fd(self) -> int:
        """The read end of the lifeline pipe, which every component inherits. Only this process
        holds the write end (not inheritable, and `subprocess` closes it in children), so the
        components read EOF exactly when it is gone."""
        if self._lifeline is None:
            self._lifeline = os.pipe()
        return self._lifeline[0]

    def _child_env(self, name: Component, lifeline: int) -> dict[str, str]:
        env = dict(self._env)
        env[LIFELINE_FD_ENV] = str(lifeline)
        # PR_SET_PDEATHSIG fires when the *thread* that started the child exits: only the main
        # thread lives as long as the process. From other threads the lifeline alone serves.
        if threading.current_thread() is threading.main_thread():
            env[PARENT_PID_ENV] = str(os.getpid())
        else:
            env.pop(PARENT_PID_ENV, None)
        if name == "storage":  # the only component that reads them
            env[ENV_DB_URL] = self.db_url
            env["ORBWEAVER_OPERATOR_TOKEN"] = self.operator_token
        elif name == "dashboard":  # a client: its users log in with their own credentials
            env.pop(ENV_DB_URL, None)
            env.pop("ORBWEAVER_TOKEN", None)
        else:
            env.pop(ENV_DB_URL, None)  # executors run user code
        return env

    def _wait_ready(self, proc: _Process) -> int:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.ready_file.exists():
                with contextlib.suppress(json.JSONDecodeError):
                    ready = json.loads(proc.ready_file.read_text())
                    if "error" in ready:  # it failed to start and said why
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            proc.popen.wait(10)
                        raise StartupError(proc.name, str(ready["error"]))
                    return int(ready.get("port", 0))
            code = proc.popen.poll()
            if code is not None:
                raise errors.Unavailable(
                    f"{proc.name} exited with code {code} during start-up:\n"
                    f"{self.logs(proc.name)[-4000:]}"
                )
            time.sleep(0.02)
        raise errors.Unavailable(
            f"{proc.name} was not ready within {self.start_timeout:g} s:\n"
            f"{self.logs(proc.name)[-4000:]}"
        )

    def logs(self, name: Component) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pid(self, name: Component) -> int:
        return self._procs[name].popen.pid

    def kill(self, name: Component, sig: int = signal.SIGKILL) -> None:
        """Kill a component (and its executors) the hard way, for fault-injection tests."""
        proc = self._procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, sig)
        proc.popen.wait(30)
        proc.log_file.close()

    def restart(self, name: Component) -> None:
        self.start_component(name)

    def stop(self, timeout: float = 30.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        names: tuple[Component, ...] = ("dashboard", "worker", "scheduler", "storage")
        for name in names:
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop on SIGTERM; killing it", name)
            # Reap the whole process group (executors included).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)
            proc.log_file.close()
        if self._lifeline is not None:
            for fd in self._lifeline:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._lifeline = None
        if not os.environ.get("ORBWEAVER_KEEP_LOCAL"):
            shutil.rmtree(self._tmp, ignore_errors=True)
