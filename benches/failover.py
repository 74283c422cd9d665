"""Failover benchmark: from the leading storage's SIGKILL to the first job the new leader accepts.

For each job count N, a fresh MariaDB database (private server, loopback TCP) is filled with N
Running jobs of 10 tasks (as `benches/recovery.py` seeds them), then two storage processes are
started on it (``python -m orbweaver storage --db URL --listen 127.0.0.1:0``): the first leads,
the second stands by. Each runs in its own UTS namespace with its own host name (``unshare
--uts``, root only), as on two machines: the standby cannot see that the leader's process is
gone and must wait for the lease to run out (``--same-host`` drops that, and the standby takes
over at once from a dead holder on its own host). A client given both addresses submits a job
to the leader; then the leader is SIGKILLed and the clock starts; the client submits again and
again (each try bounded by 1 s, 20 ms apart) until a submission is accepted. Measured:

* ``failover_s``: SIGKILL to the first accepted submission;
* ``recovery_s``: the new leader's cache rebuild, as it logs it (``job cache recovered``);
* ``takeover_s``: SIGKILL to the new leader's ``leading: rebuilding the job cache`` line
  (lease expiry, the standby's confirmation tick and the campaign).

    python benches/failover.py --jobs 0 10000 100000 --repeat 3

Writes ``benches/results/failover.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]
with contextlib.suppress(ImportError):  # a plain checkout without `pip install -e .`
    import orbweaver  # noqa: F401
if "orbweaver" not in sys.modules:
    sys.path.insert(0, str(HERE.parent / "python"))

import _harness as h  # noqa: E402
import ow_tasks as t  # noqa: E402
from recovery import seed  # noqa: E402

import orbweaver as ow  # noqa: E402
from orbweaver import errors  # noqa: E402

OPERATOR_TOKEN = secrets.token_hex(16)
READY_TIMEOUT_S = 600.0
RETRY_EVERY_S = 0.02
LEASE_S = 3.0  # the default


def _log_entries(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                yield entry


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Storage:
    """`orbweaver storage` as a child process, on its own host name unless `same_host`."""

    def __init__(self, url: str, workdir: Path, name: str, same_host: bool) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "storage.log"
        self.ready = workdir / "storage.ready"
        self.ready.unlink(missing_ok=True)
        env = {
            **os.environ,
            "ORBWEAVER_LOG_LEVEL": "INFO",
            "ORBWEAVER_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "PYTHONPATH": os.pathsep.join(
                p for p in [str(HERE.parent / "python"), os.environ.get("PYTHONPATH", "")] if p
            ),
        }
        own_host = [] if same_host else [
            "unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', name,
        ]  # fmt: skip
        cmd = [*own_host, sys.executable, "-m", "orbweaver", "storage", "--db", url,
               "--listen", "127.0.0.1:0", "--ready-file", str(self.ready)]  # fmt: skip
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"storage exited:\n{self.log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("storage not ready in time")
            time.sleep(0.01)
        self.port = int(json.loads(self.ready.read_text())["port"])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> float:
        """SIGKILL; the wall-clock time it was sent."""
        sent = time.time()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        return sent

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)

    def first(self, msg: str) -> dict[str, Any] | None:
        return next((e for e in _log_entries(self.log_path) if e.get("msg") == msg), None)


def one_failover(url: str, workdir: Path, jobs: int, same_host: bool) -> dict[str, Any]:
    leader = Storage(url, workdir / "a", "storage-a", same_host)
    standby: Storage | None = None
    try:
        standby = Storage(url, workdir / "b", "storage-b", same_host)
        if standby.first("storage serving") is not None:
            raise RuntimeError("the second storage leads: the first should")
        g = ow.TaskGraph()
        g.add(t.inc)
        both = f"{leader.address},{standby.address}"
        with ow.Client(both, operator_token=OPERATOR_TOKEN) as operator:
            group = operator.add_resource_group(f"failover-{secrets.token_hex(4)}", "pw")
        with ow.Client(both, resource_group=group, timeout=1.0, connect_timeout=1.0) as client:
            client.submit(g, [1])  # the leader accepts
            killed_at = leader.kill()
            started = time.perf_counter()
            tries = 0
            while True:
                tries += 1
                try:
                    client.submit(g, [2])
                    break
                except errors.Unavailable:
                    if time.perf_counter() - started > READY_TIMEOUT_S:
                        raise
                    time.sleep(RETRY_EVERY_S)
            failover_s = time.perf_counter() - started
        rebuilding = standby.first("leading: rebuilding the job cache")
        recovered = standby.first("job cache recovered")
        if recovered is None or int(recovered["jobs"]) != jobs + 1:  # and the first job
            raise RuntimeError(f"the new leader recovered {recovered}, expected {jobs} jobs")
        return {
            "failover_s": round(failover_s, 3),
            "takeover_s": None
            if rebuilding is None
            else round(_epoch(rebuilding["ts"]) - killed_at, 3),
            "recovery_s": round(float(recovered["seconds"]), 3),
            "submit_tries": tries,
        }
    finally:
        leader.stop()
        if standby is not None:
            standby.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    with h.private_server() as server, tempfile.TemporaryDirectory() as tmp:
        version = h.server_version(server)
        for jobs in args.jobs:
            runs = []
            for i in range(args.repeat):
                url = server.create_database()
                try:
                    if jobs:
                        seed(url, jobs, "bulk", lambda msg: print(msg, flush=True))
                    r = one_failover(url, Path(tmp) / f"{jobs}-{i}", jobs, args.same_host)
                finally:
                    server.drop_database(url)
                print(f"{jobs:>7,} running jobs: {r}", flush=True)
                runs.append(r)
            results.append({
                "running_jobs": jobs,
                "failover_s": h.median([r["failover_s"] for r in runs]),
                "takeover_s": h.median([r["takeover_s"] for r in runs if r["takeover_s"]]),
                "recovery_s": h.median([r["recovery_s"] for r in runs]),
                "runs": runs,
            })  # fmt: skip
    return {
        "benchmark": "failover",
        "command": "python benches/failover.py " + " ".join(sys.argv[1:]),
        "machine": h.machine_info(),
        "orbweaver": h.orbweaver_version(),
        "database": f"MariaDB {version} (private server, loopback TCP)",
        "lease_s": LEASE_S,
        "same_host": args.same_host,
        "repeat": args.repeat,
        "results": results,
    }


def print_table(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Storage failover (leader SIGKILL -> first accepted job; median of "
        f"{payload['repeat']}; lease {payload['lease_s']:g} s)"
    )
    for col in ("running jobs", "failover s", "takeover s", "recovery s"):
        table.add_column(col, justify="right")
    for r in payload["results"]:
        table.add_row(f"{r['running_jobs']:,}", f"{r['failover_s']:.2f}",
                      f"{r['takeover_s']:.2f}", f"{r['recovery_s']:.2f}")  # fmt: skip
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[0, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--same-host",
        action="store_true",
        help="both storages see each other's processes (the standby takes over from a dead "
        "holder at once)",
    )
    parser.add_argument("--out", type=Path, default=h.RESULTS_DIR / "failover.json")
    args = parser.parse_args(argv)
    h.warn_if_busy()
    payload = run(args)
    h.write_results(args.out, payload)
    print_table(payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
