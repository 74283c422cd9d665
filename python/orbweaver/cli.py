"""The `orbweaver` command line: run the services, submit and inspect jobs, run the demo."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from orbweaver import __version__, errors
from orbweaver._config import add_flags, flag_values, read_secret_file
from orbweaver._log import setup_logging
from orbweaver.states import JobState

DEFAULT_STORAGE = "127.0.0.1:50051"
DEFAULT_LOCAL_DB = "sqlite:///orbweaver.db"

log = logging.getLogger("orbweaver.cli")

_ON_COMMAND_LINE = "on the command line, where every local user can read it (ps, /proc/PID/cmdline)"


def _write_ready(path: str | None, port: int) -> None:
    """Tell a supervising process (LocalCluster) the bound port, atomically."""
    _write_ready_file(path, {"port": port, "pid": os.getpid()})


def _ready(component: str, path: str | None, port: Callable[[], int]) -> Callable[[], None]:
    """Once a service serves: its secrets leave its environment (everything that reads them
    has run), it becomes non-dumpable, and its supervisor learns the port."""

    def ready() -> None:
        from orbweaver._hardening import harden_process

        harden_process(component)
        _write_ready(path, port())

    return ready


def _write_ready_file(path: str | None, content: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(content))
    tmp.replace(target)


def _token(args: argparse.Namespace) -> str | None:
    """The cluster token given on the command line (`--token` or `--token-file`), if any; a
    service warns that `--token` shows it to every local user."""
    token: str | None = getattr(args, "token", None)
    token_file: str | None = getattr(args, "token_file", None)
    if token_file:
        return read_secret_file(token_file, "the token file")
    if token and hasattr(args, "token_file"):  # a service command
        log.warning(
            f"--token puts the cluster token {_ON_COMMAND_LINE}; set ORBWEAVER_TOKEN or use "
            "--token-file PATH instead",
            extra={"flag": "--token"},
        )
    return token or None


def _db_url(args: argparse.Namespace) -> str | None:
    """The database URL given on the command line: `--db`, else the file of `--db-file` (None:
    the environment's, the config file's or the default). A password in `--db` gets a warning:
    `ps` shows it."""
    from orbweaver.storage.db.url import ENV_DB_URL, has_password, read_url_file

    if args.db:
        if has_password(args.db):
            log.warning(
                f"--db puts the database password {_ON_COMMAND_LINE}; set {ENV_DB_URL}, use "
                "--db-file PATH, or leave the password out of the URL and set "
                "ORBWEAVER_DB_PASSWORD instead",
                extra={"flag": "--db"},
            )
        return str(args.db)
    if args.db_file:
        return read_url_file(args.db_file)
    return None


def _config_file(args: argparse.Namespace) -> Path | None:
    return Path(args.config) if args.config else None


# ---------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------


def cmd_storage(args: argparse.Namespace) -> int:
    from orbweaver._service import run_until_signal
    from orbweaver.storage.config import StorageConfig
    from orbweaver.storage.runtime import StorageRuntime

    setup_logging("storage", args.log_level)
    config = StorageConfig.load(
        _config_file(args),
        token=_token(args),
        flags={**flag_values(args, StorageConfig), "db_url": _db_url(args)},
    )
    runtime = StorageRuntime(config)
    return run_until_signal(runtime, _ready("storage", args.ready_file, lambda: runtime.port))


def cmd_scheduler(args: argparse.Namespace) -> int:
    from orbweaver._service import run_until_signal
    from orbweaver.scheduler.config import SchedulerConfig
    from orbweaver.scheduler.runtime import SchedulerRuntime

    setup_logging("scheduler", args.log_level)
    config = SchedulerConfig.load(
        _config_file(args), token=_token(args), flags=flag_values(args, SchedulerConfig)
    )
    runtime = SchedulerRuntime(config)
    return run_until_signal(runtime, _ready("scheduler", args.ready_file, lambda: runtime.port))


def cmd_worker(args: argparse.Namespace) -> int:
    from orbweaver._service import run_until_signal
    from orbweaver.worker.config import WorkerConfig
    from orbweaver.worker.isolation import harden_worker_process
    from orbweaver.worker.manager import ExecutionManager

    setup_logging("worker", args.log_level)
    config = WorkerConfig.load(
        _config_file(args), token=_token(args), flags=flag_values(args, WorkerConfig)
    )
    # Everything is read: secrets leave this process's environment, and task code running as
    # the same user cannot read its memory or /proc files.
    harden_worker_process()
    em = ExecutionManager(config)
    return run_until_signal(em, lambda: _write_ready(args.ready_file, em.em_id))


def cmd_local(args: argparse.Namespace) -> int:
    from orbweaver.local import LocalCluster
    from orbweaver.storage.db.url import redact_url

    setup_logging("local", args.log_level)
    tasks_dir = args.tasks_dir or os.environ.get("ORBWEAVER_TASKS_DIR") or os.getcwd()
    if args.demo and not args.tasks_dir:
        tasks_dir = str(_DEMO_TASKS)
    if args.dashboard:
        _check_dashboard_extra()
    db = _db_url(args) or DEFAULT_LOCAL_DB
    cluster = LocalCluster(
        workers=args.workers,
        db=db,
        tasks_dir=tasks_dir,
        listen=args.listen,
        token=_token(args) or os.environ.get("ORBWEAVER_TOKEN") or None,
        log_dir=args.log_dir,
        metrics_port=args.metrics_port,
        dashboard=args.dashboard,
    )
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with cluster:
        print(
            f"orbweaver local cluster: storage {cluster.address}, scheduler"
            f" {cluster.scheduler_address}, {args.workers} executor processes",
            flush=True,
        )
        print(f"  database {redact_url(db)}; tasks from {tasks_dir}", flush=True)
        if cluster.metrics_ports:
            where = ", ".join(f"{name} :{port}" for name, port in cluster.metrics_ports.items())
            print(f"  metrics: {where}", flush=True)
        print(
            f"  export ORBWEAVER_STORAGE={cluster.address}"
            f" ORBWEAVER_OPERATOR_TOKEN={cluster.operator_token}"
            f" ORBWEAVER_RESOURCE_GROUP={cluster.resource_group.name}",
            flush=True,
        )
        if cluster.dashboard_url:
            print(
                f"  dashboard: {cluster.dashboard_url} (log in with the operator token above)",
                flush=True,
            )
        if args.demo:
            graph, shards = _demo_graph()
            job = cluster.client().submit(graph, shards)
            where = f": {cluster.dashboard_url}jobs/{job.id}" if cluster.dashboard_url else ""
            print(f"  demo job {job.id} submitted{where}", flush=True)
            print(
                "  submit it again (with the export above): orbweaver demo --storage "
                f"{cluster.address}",
                flush=True,
            )
        stop.wait()
    return 0


def _check_dashboard_extra() -> None:
    """Refuse at once, saying how to install it, when the dashboard's extra is missing."""
    from orbweaver.dashboard import MISSING_EXTRA

    try:
        import orbweaver.dashboard.server  # noqa: F401
    except ImportError as exc:
        raise errors.ConfigError(f"{MISSING_EXTRA} ({exc})") from None


def cmd_dashboard(args: argparse.Namespace) -> int:
    _check_dashboard_extra()
    from orbweaver._rpc import Security
    from orbweaver.dashboard.server import bind, serve

    setup_logging("dashboard", args.log_level)
    # As every client: the CA that signed the storage's certificate, and a client certificate
    # for mutual TLS, from $ORBWEAVER_TLS_*.
    storage_tls = Security.from_env(dict(os.environ)).tls
    cert = args.tls_cert or os.environ.get("ORBWEAVER_TLS_CERT")
    key = args.tls_key or os.environ.get("ORBWEAVER_TLS_KEY")
    if bool(cert) != bool(key):
        raise errors.ConfigError("HTTPS needs both --tls-cert and --tls-key")
    https = (Path(cert), Path(key)) if cert and key else None
    sock = bind(args.listen)
    port = int(sock.getsockname()[1])
    serve(
        args.storage,
        sock,
        read_only=args.read_only,
        https=https,
        storage_tls=storage_tls,
        ready=_ready("dashboard", args.ready_file, lambda: port),
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Client commands
# ---------------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    """A client with the credentials of the environment: the operator token, or a resource
    group (`--resource-group`, password from `$ORBWEAVER_PASSWORD`)."""
    from orbweaver.client import Client

    return Client(args.storage, resource_group=args.resource_group or None)


def _load_graph(spec: str, tasks_dir: str | None) -> Any:
    """`MODULE:GRAPH`: a TaskGraph attribute, or a function without arguments returning one."""
    from orbweaver.graph import TaskGraph
    from orbweaver.tdl import TaskFunction

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise errors.InvalidArgument(f"expected MODULE:GRAPH, got {spec!r}")
    sys.path.insert(0, str(Path(tasks_dir).resolve()) if tasks_dir else os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise errors.InvalidArgument(f"cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise errors.InvalidArgument(f"{module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if isinstance(target, TaskFunction):
        raise errors.InvalidArgument(
            f"{spec} is a task; name a TaskGraph or a function that builds one"
        )
    if callable(target) and not isinstance(target, TaskGraph):
        target = target()
    if not isinstance(target, TaskGraph):
        raise errors.InvalidArgument(f"{spec} is not an orbweaver TaskGraph")
    return target


def cmd_submit(args: argparse.Namespace) -> int:
    from orbweaver.client import ResourceGroup

    graph = _load_graph(args.graph, args.tasks_dir)
    try:
        inputs = json.loads(args.inputs)
    except json.JSONDecodeError as exc:
        raise errors.InvalidArgument(f"--inputs is not valid JSON: {exc}") from exc
    if not isinstance(inputs, list):
        raise errors.InvalidArgument("--inputs must be a JSON list")
    with _client(args) as client:
        group: ResourceGroup | None = client.default_resource_group
        if group is None:
            raise errors.InvalidArgument(
                "submit: name the resource group (--resource-group or ORBWEAVER_RESOURCE_GROUP)"
            )
        job = client.submit(graph, inputs, resource_group=group)
        print(f"job {job.id} submitted", flush=True)
        if not args.wait:
            return 0
        state = _wait_with_progress(job)
        return _print_final(job, state)


def _wait_with_progress(job: Any) -> JobState:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("job {task.fields[job]} [bold]{task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("job", total=None, job=job.id, state="")
        while True:
            p = job.progress()
            done = p.succeeded + p.failed + p.cancelled
            bar.update(task, total=p.total or None, completed=done, state=p.state.name)
            if p.state.is_terminal:
                return JobState(p.state)
            job.wait(timeout=0.5)


def _print_final(job: Any, state: JobState) -> int:
    if state == JobState.SUCCEEDED:
        print(json.dumps(job.outputs(), default=_jsonable))
        return 0
    if state == JobState.FAILED:
        print(f"job {job.id} FAILED: {job.error()}", file=sys.stderr)
        return 1
    print(f"job {job.id} {state.name}", file=sys.stderr)
    return 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    return str(value)


def cmd_status(args: argparse.Namespace) -> int:
    if args.job_id is None:
        return cmd_jobs(args)
    from rich.console import Console
    from rich.table import Table

    with _client(args) as client:
        job = client.get_job(args.job_id)
        p = job.progress(explain=10)
        table = Table(title=f"job {job.id}: {p.state.name}")
        for col in ("total", "pending", "ready", "running", "succeeded", "failed", "cancelled"):
            table.add_column(col, justify="right")
        table.add_row(
            *(
                str(v)
                for v in (
                    p.total,
                    p.pending,
                    p.ready,
                    p.running,
                    p.succeeded,
                    p.failed,
                    p.cancelled,
                )
            )
        )
        console = Console()
        console.print(table)
        for task, reason, detail in p.waiting:
            console.print(f"  {task}: {reason} {detail}")
        if p.state == JobState.FAILED:
            console.print(f"[red]error:[/red] {job.error()}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    with _client(args) as client:
        jobs = client.jobs(limit=getattr(args, "limit", 50))
    table = Table(title="jobs")
    for col in ("id", "group", "state", "created", "error"):
        table.add_column(col)
    for j in jobs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created_at_ms / 1000))
        table.add_row(
            str(j.id), str(j.resource_group_id), j.state.name, created, (j.error or "")[:80]
        )
    Console().print(table)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        state = client.get_job(args.job_id).cancel()
    print(f"job {args.job_id} {state.name}")
    return 0


def cmd_outputs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps(client.get_job(args.job_id).outputs(), default=_jsonable))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Ask a server's standard gRPC health service: 0 when it answers SERVING, 1 for anything
    else, including a server that cannot be reached or a TLS file that cannot be read (2 would be
    taken for a usage error, and container runtimes reserve it)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from orbweaver._config import parse_duration
    from orbweaver._rpc import Security, make_channel

    what = f"{args.address} ({args.service})" if args.service else args.address
    try:
        timeout = parse_duration(args.timeout, "--timeout")
        # TLS as every client takes it; health checks need no token, so none is ever sent.
        tls = Security.from_env(dict(os.environ)).tls
        with make_channel(args.address, Security(tls=tls)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=timeout)
            role = _storage_role(stub, timeout) if not args.service else None
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        print(f"{what}: not serving: {code}: {details}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"{what}: cannot check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        print(f"{what}: {status}" + (f" ({role})" if role else ""))
        return 0
    print(f"{what}: not serving: {status}", file=sys.stderr)
    return 1


def _storage_role(stub: Any, timeout: float) -> str | None:
    """`leader` or `standby` for a storage (its health service names its role), else None."""
    import grpc
    from grpc_health.v1 import health_pb2

    from orbweaver._rpc import HEALTH_LEADER, HEALTH_STANDBY

    for name, role in ((HEALTH_LEADER, "leader"), (HEALTH_STANDBY, "standby")):
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=timeout)
        except grpc.RpcError:
            return None  # not a storage (NOT_FOUND), or gone meanwhile
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return role
    return None


_DEMO_TASKS = Path(__file__).resolve().parent / "_demo"


def _demo_graph() -> tuple[Any, list[str]]:
    """The demo's graph and inputs (its tasks are imported as the executors import them)."""
    from orbweaver.demo import SHARDS

    if str(_DEMO_TASKS) not in sys.path:
        sys.path.insert(0, str(_DEMO_TASKS))
    demo = importlib.import_module("wordcount_demo")
    return demo.build_graph(), list(SHARDS)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.storage:
        # Into a running cluster whose executors import the demo's tasks (`local --demo`).
        from orbweaver.client import Client

        graph, shards = _demo_graph()
        with Client(args.storage) as client:
            group = client.default_resource_group or client.resource_group("default")
            job = client.submit(graph, shards, resource_group=group)
            print(f"demo job {job.id} submitted", flush=True)
            state = _wait_with_progress(job)
            return _print_final(job, state)
    from orbweaver.demo import run_demo

    return run_demo(workers=args.workers)


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orbweaver",
        description="Fault-tolerant distributed task graphs for Python, with a Rust core.",
    )
    parser.add_argument("--version", action="version", version=f"orbweaver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def service(name: str, help_: str, fn: Callable[[argparse.Namespace], int]) -> Any:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        p.add_argument("--log-level", help="debug, info (default), warning, error")
        token = p.add_mutually_exclusive_group()
        token.add_argument(
            "--token",
            help="shared cluster token (default: $ORBWEAVER_TOKEN); `ps` shows it to every local "
            "user, prefer $ORBWEAVER_TOKEN or --token-file",
        )
        token.add_argument(
            "--token-file", metavar="PATH", help="read the shared cluster token from this file"
        )
        p.add_argument("--ready-file", help=argparse.SUPPRESS)
        return p

    def database(p: argparse.ArgumentParser, default: str) -> None:
        db = p.add_mutually_exclusive_group()
        db.add_argument(
            "--db",
            metavar="URL",
            help=f"database URL: sqlite:///PATH or mariadb://USER@HOST:PORT/DB (default: "
            f"$ORBWEAVER_DB, else {default}); a password here shows in `ps`: prefer "
            "$ORBWEAVER_DB, --db-file or $ORBWEAVER_DB_PASSWORD",
        )
        db.add_argument("--db-file", metavar="PATH", help="read the database URL from this file")

    def configured(name: str, help_: str, fn: Callable[[argparse.Namespace], int]) -> Any:
        p = service(name, help_, fn)
        p.add_argument(
            "--config", metavar="FILE", help=f"TOML file with a [{name}] table of settings"
        )
        return p

    def client_cmd(
        name: str, help_: str, fn: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        p.add_argument(
            "--storage",
            default=os.environ.get("ORBWEAVER_STORAGE", DEFAULT_STORAGE),
            help=f"storage address host:port (default: $ORBWEAVER_STORAGE or {DEFAULT_STORAGE})",
        )
        p.add_argument(
            "--resource-group",
            default=os.environ.get("ORBWEAVER_RESOURCE_GROUP"),
            help="act within this resource group, with the password in $ORBWEAVER_PASSWORD "
            "(default: $ORBWEAVER_RESOURCE_GROUP; the operator token in "
            "$ORBWEAVER_OPERATOR_TOKEN sees every group)",
        )
        return p

    p = sub.add_parser("demo", help="run a built-in example job on an embedded local cluster")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--storage",
        metavar="HOST:PORT",
        help="submit the demo job to this running cluster instead (started with "
        "`orbweaver local --demo`; the operator token from $ORBWEAVER_OPERATOR_TOKEN)",
    )
    p.set_defaults(fn=cmd_demo)

    p = service("local", "run storage, scheduler and a worker on this machine", cmd_local)
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics: storage on this port, the scheduler on the next, the "
        "worker on the one after",
    )
    database(p, DEFAULT_LOCAL_DB)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--tasks-dir", help="directory of task modules (default: current directory)")
    p.add_argument("--listen", default=DEFAULT_STORAGE, help="storage address to listen on")
    p.add_argument("--log-dir", help="where component logs go (default: a temporary directory)")
    p.add_argument(
        "--dashboard",
        nargs="?",
        const="127.0.0.1:8265",
        metavar="HOST:PORT",
        help="also serve the web dashboard (default address 127.0.0.1:8265; needs the "
        "orbweaver[dashboard] extra)",
    )

    p.add_argument(
        "--demo",
        action="store_true",
        help="run the built-in demo's tasks (unless --tasks-dir is given) and submit its job",
    )

    # A client of the storage, not a service: no cluster token (its users log in).
    dashboard_help = "serve the web dashboard of a cluster (needs the orbweaver[dashboard] extra)"
    p = sub.add_parser("dashboard", help=dashboard_help, description=dashboard_help)
    p.set_defaults(fn=cmd_dashboard)
    p.add_argument("--log-level", help="debug, info (default), warning, error")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p.add_argument(
        "--storage",
        default=os.environ.get("ORBWEAVER_STORAGE", DEFAULT_STORAGE),
        help=f"storage address host:port (default: $ORBWEAVER_STORAGE or {DEFAULT_STORAGE})",
    )
    p.add_argument(
        "--listen", default="127.0.0.1:8265", help="HOST:PORT to serve on (default: %(default)s)"
    )
    p.add_argument(
        "--read-only", action="store_true", help="hide the cancel button and refuse cancels"
    )
    p.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve HTTPS with this certificate (default: $ORBWEAVER_TLS_CERT); the storage "
        "is reached with $ORBWEAVER_TLS_CA (and the certificate and key for mutual TLS)",
    )
    p.add_argument("--tls-key", metavar="PEM", help="its key (default: $ORBWEAVER_TLS_KEY)")

    from orbweaver.scheduler.config import SchedulerConfig
    from orbweaver.storage.config import StorageConfig
    from orbweaver.worker.config import WorkerConfig

    p = configured("storage", "run the storage service", cmd_storage)
    database(p, "the config file's db_url, else sqlite:///orbweaver.db")
    add_flags(p, StorageConfig, "storage", skip=("db_url",))
    p = configured("scheduler", "run the scheduler", cmd_scheduler)
    add_flags(p, SchedulerConfig, "scheduler")
    p = configured("worker", "run an execution manager with a pool of executors", cmd_worker)
    add_flags(p, WorkerConfig, "worker")

    p = sub.add_parser(
        "health",
        help="check a storage or scheduler through its gRPC health service",
        description="Ask the server at ADDRESS (host:port) whether it is serving, through the "
        "standard grpc.health.v1.Health/Check: exit code 0 when it answers SERVING, 1 otherwise "
        "(not serving, unreachable, not answering within --timeout). TLS from "
        "$ORBWEAVER_TLS_CA (and $ORBWEAVER_TLS_CERT/_KEY for mutual TLS); no token is needed.",
    )
    p.set_defaults(fn=cmd_health)
    p.add_argument("address", metavar="ADDRESS", help="host:port of a storage or scheduler")
    p.add_argument(
        "--service", default="", help="the health service's service name (default: the server)"
    )
    p.add_argument("--timeout", default="5s", help="how long to wait for the answer (default: 5s)")

    p = client_cmd("submit", "submit a task graph", cmd_submit)
    p.add_argument("graph", metavar="MODULE:GRAPH", help="e.g. mytasks:graph")
    p.add_argument("--inputs", default="[]", help="graph inputs as a JSON list")
    p.add_argument("--tasks-dir", help="where MODULE lives (default: current directory)")
    p.add_argument("--wait", action="store_true", help="show progress and wait for the result")

    p = client_cmd("status", "show a job's progress (or list jobs)", cmd_status)
    p.add_argument("job_id", type=int, nargs="?")
    p = client_cmd("jobs", "list recent jobs", cmd_jobs)
    p.add_argument("--limit", type=int, default=50)
    p = client_cmd("cancel", "cancel a job", cmd_cancel)
    p.add_argument("job_id", type=int)
    p = client_cmd("outputs", "print a succeeded job's outputs as JSON", cmd_outputs)
    p.add_argument("job_id", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from orbweaver._service import StartupError, follow_parent
    from orbweaver.storage.db.errors import DbError

    follow_parent()  # started by LocalCluster: stop when it dies
    try:
        return int(args.fn(args))
    except StartupError as exc:
        # A port in use, a database held by another storage: the reason says it all.
        message = exc.reason if exc.component in ("", args.command) else str(exc)
    except (errors.OrbweaverError, DbError, ValueError, OSError) as exc:
        # Configuration and connection problems: a readable line, not a traceback.
        message = f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        return 130
    print(f"orbweaver {args.command}: {message}", file=sys.stderr)
    # A supervisor waiting for the ready file learns why instead of reading logs.
    with contextlib.suppress(OSError):
        _write_ready_file(getattr(args, "ready_file", None), {"error": message})
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
