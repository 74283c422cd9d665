"""An Orbweaver cluster spread over the hosts of a namespace network (:mod:`support.netns`).

Hosts, by name: ``db`` (a private MariaDB server), ``storage1`` .. ``storageN`` (one leads, the
others stand by), ``scheduler``, ``worker1`` .. ``workerN`` and ``client``, each a network
namespace with one address in 198.18.0.0/15 (storage hosts also have their own host name, as
separate machines would: a storage cannot tell its peers' processes apart from its own). The
services are the real commands (``python -m orbweaver storage | scheduler | worker``) run with
``ip netns exec``, with the command lines of :mod:`support.service_commands` (the ones the
deployment files in ``deploy/`` run), a cluster token and an operator token passed as in
production, and the short
liveness settings of :mod:`support.liveness` (a host cut off is noticed within seconds). Code
that plays the client runs on the ``client`` host (:meth:`MultiHostCluster.run`).

Faults, by host name: :meth:`cut` / :meth:`restore` (the network), :meth:`kill` /
:meth:`restart` (the service on it), :meth:`delay` (every link). Every worker host's services
and executors get ``MULTIHOST_HOST=<host name>`` and, with ``markers``, ``MULTIHOST_MARKERS``
(executors may read both). :meth:`stop` (or the ``with`` block's end) stops every process and
deletes every namespace, whatever state the test left them in.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from pathlib import Path

from support.liveness import SCHEDULER_CONFIG, STORAGE_CONFIG
from support.mariadb_server import MariaDBServer, private_server
from support.netns import SUBNET, Host, Network
from support.procs import ServiceProcess, StorageProcess, child_env, one_leader
from support.service_commands import SCHEDULER, STORAGE, WORKER, ServiceCommand

STORAGE_PORT = 50051
SCHEDULER_PORT = 50052
MARIADB_PORT = 3306
DB_USER = "orbweaver"
STOP_TIMEOUT = 15.0

# Ready work the scheduler polled but whose reply a partition lost is offered again after the
# visibility timeout: short here, so a cut-off scheduler costs seconds, not a minute.
MULTIHOST_STORAGE_CONFIG = STORAGE_CONFIG + "visibility_timeout = 5.0\n"


class MultiHostCluster:
    def __init__(
        self,
        workdir: Path,
        tasks_dir: Path,
        workers: int = 2,
        storages: int = 2,
        processes: int = 1,
        markers: Path | None = None,
        storage_config: str = MULTIHOST_STORAGE_CONFIG,
        scheduler_config: str = SCHEDULER_CONFIG,
    ) -> None:
        self.workdir = workdir
        self.tasks_dir = tasks_dir
        self.worker_names = [f"worker{i + 1}" for i in range(workers)]
        self.storage_names = [f"storage{i + 1}" for i in range(storages)]
        self.processes = processes
        self.markers = markers
        self.storage_config = storage_config
        self.scheduler_config = scheduler_config
        self.token = secrets.token_hex(16)
        self.operator_token = secrets.token_hex(16)
        self.network: Network | None = None
        self.services: dict[str, ServiceProcess] = {}
        self.mariadb: MariaDBServer | None = None
        self._stack = contextlib.ExitStack()

    # -- addresses --

    @property
    def net(self) -> Network:
        assert self.network is not None, "the cluster is not started"
        return self.network

    def host(self, name: str) -> Host:
        return self.net[name]

    def address_of(self, storage: str) -> str:
        return f"{self.host(storage).address}:{STORAGE_PORT}"

    @property
    def storage_address(self) -> str:
        """Every storage's address, `a:50051,b:50051`: what clients and services are given."""
        return ",".join(self.address_of(name) for name in self.storage_names)

    @property
    def scheduler_address(self) -> str:
        return f"{self.host('scheduler').address}:{SCHEDULER_PORT}"

    # -- life cycle --

    def start(self) -> MultiHostCluster:
        try:
            self.network = self._stack.enter_context(Network())
            for name in ["db", *self.storage_names, "scheduler", *self.worker_names, "client"]:
                self.network.add_host(name)
            db_url = self._start_mariadb()
            for name in self.storage_names:
                self._start_storage(name, db_url)
            self._start_scheduler()
            for name in self.worker_names:
                self._start_worker(name)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_mariadb(self) -> str:
        db = self.host("db")
        self.mariadb = self._stack.enter_context(
            private_server(
                bind_address=db.address,
                port=MARIADB_PORT,
                command_prefix=db.prefix,
                prefix=f"owdb-{self.net.run_id}-",
            )
        )
        conn = self.mariadb.connect()
        try:  # the storage host connects over the network, not as root@localhost
            cur = conn.cursor()
            netmask = f"{SUBNET.network_address}/{SUBNET.netmask}"
            cur.execute(f"CREATE USER '{DB_USER}'@'{netmask}' IDENTIFIED BY '{self.token}'")
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'{netmask}'")
        finally:
            conn.close()
        name = self.mariadb.create_database("orbweaver_multihost").rsplit("/", 1)[1]
        return f"mariadb://{DB_USER}@{db.address}:{MARIADB_PORT}/{name}"

    def _service_env(self, host: str, command: ServiceCommand) -> dict[str, str]:
        """The secrets `command` takes from its environment, and the test's host name."""
        secrets = {
            "ORBWEAVER_TOKEN": self.token,
            "ORBWEAVER_OPERATOR_TOKEN": self.operator_token,
            "ORBWEAVER_DB_PASSWORD": self.token,  # the MariaDB user's password (see above)
        }
        env = {name: secrets[name] for name in command.secrets}
        env["MULTIHOST_HOST"] = host
        if self.markers is not None:
            env["MULTIHOST_MARKERS"] = str(self.markers)
        return env

    def _workdir(self, host: str) -> Path:
        path = self.workdir / host
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _start_storage(self, name: str, db_url: str) -> None:
        host = self.host(name)
        workdir = self._workdir(name)
        # Its own UTS namespace and host name: a separate machine's.
        own_hostname = ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', name]
        proc = StorageProcess(
            db_url,
            workdir,
            config=self.storage_config,  # written to workdir/storage.toml
            env=self._service_env(name, STORAGE),
            host=host.address,
            command_prefix=[*host.prefix, *own_hostname],
        )
        proc.args = STORAGE.render(
            db_url=db_url,
            listen=f"{host.address}:{STORAGE_PORT}",
            advertise=self.address_of(name),
            config=str(workdir / "storage.toml"),
        )
        proc.port = STORAGE_PORT
        self._launch(name, proc)

    def _start_scheduler(self) -> None:
        host = self.host("scheduler")
        workdir = self._workdir("scheduler")
        config = workdir / "scheduler.toml"
        config.write_text(self.scheduler_config)
        proc = ServiceProcess(
            "scheduler",
            SCHEDULER.render(
                storage=self.storage_address, listen=self.scheduler_address, config=str(config)
            ),
            workdir,
            env=self._service_env("scheduler", SCHEDULER),
            command_prefix=host.prefix,
        )
        self._launch("scheduler", proc)

    def _start_worker(self, name: str) -> None:
        host = self.host(name)
        proc = ServiceProcess(
            "worker",
            WORKER.render(
                storage=self.storage_address,
                scheduler=self.scheduler_address,
                tasks_dir=str(self.tasks_dir),
                processes=str(self.processes),
                ip=host.address,
                executor_env="MULTIHOST_*",
            ),
            self._workdir(name),
            env=self._service_env(name, WORKER),
            command_prefix=host.prefix,
        )
        self._launch(name, proc)

    def _launch(self, host: str, proc: ServiceProcess) -> None:
        self.services[host] = proc
        proc.start()

    def stop(self) -> None:
        """Stop the services (workers first, each SIGKILLed if SIGTERM is not enough in
        `STOP_TIMEOUT`), MariaDB, then delete the namespaces (killing anything left in them)."""
        try:
            for name in [*self.worker_names, "scheduler", *self.storage_names]:
                proc = self.services.get(name)
                if proc is not None and proc.alive:
                    proc.terminate(STOP_TIMEOUT)
        finally:
            self._stack.close()  # MariaDB, then the network

    def __enter__(self) -> MultiHostCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --

    def cut(self, host: str) -> None:
        """Cut `host` off the network (every packet to or from it lost) until `restore`."""
        self.net.cut(host)

    def restore(self, host: str) -> None:
        self.net.restore(host)

    def delay(self, rtt_ms: float) -> None:
        """`rtt_ms` of round-trip delay between any two hosts (0: none)."""
        self.net.delay(rtt_ms)

    def kill(self, host: str) -> None:
        """SIGKILL the service of `host` (`db`: the MariaDB server)."""
        if host == "db":
            assert self.mariadb is not None
            self.mariadb.kill()
        else:
            self.services[host].kill()

    def restart(self, host: str) -> None:
        """Start the service of `host` again, on the same address and port."""
        if host == "db":
            assert self.mariadb is not None
            self.mariadb.restart()
        else:
            self.services[host].restart()

    def role(self, storage: str) -> str:
        """`leader`, `standby` or `down`, as `storage`'s health service tells the client host."""
        for role in ("leader", "standby"):
            check = self.run(["-m", "orbweaver", "health", self.address_of(storage),
                              "--service", f"orbweaver.storage.{role}", "--timeout", "5"],
                             timeout=30)  # fmt: skip
            if check.returncode == 0:
                return role
        return "down"

    def leaders(self) -> list[str]:
        return [name for name in self.storage_names if self.role(name) == "leader"]

    def leader(self, timeout: float = 60.0) -> str:
        """The one storage that leads, once exactly one does."""
        return one_leader(self.leaders, timeout, interval=0.5)

    # -- the client host --

    def client_env(self) -> dict[str, str]:
        """What a client on the client host needs: the storage address, the operator token."""
        env = child_env()
        env.update(ORBWEAVER_STORAGE=self.storage_address,
                   ORBWEAVER_OPERATOR_TOKEN=self.operator_token)  # fmt: skip
        return env

    def run(
        self, args: list[str], timeout: float = 180.0, host: str = "client"
    ) -> subprocess.CompletedProcess[str]:
        """Run `python ARGS` on `host` (the client by default) with `client_env()`."""
        return subprocess.run(
            [*self.host(host).prefix, sys.executable, *args],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
