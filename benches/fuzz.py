"""Long fuzzing campaigns with the generators of `tests/hostile` (`tests/support/fuzzing.py`):
every storage RPC with generated fields, raw bytes as requests, and hostile executor frames,
against real processes. A finding (an INTERNAL / UNKNOWN / timed-out answer, a dead process, an
executor that hangs or dies with a traceback) stops the campaign with the failing example;
otherwise it prints what was tried, the status codes seen per method and the storage's peak
memory, and writes `benches/results/fuzz.json`.

    python benches/fuzz.py --examples 20000                 # RPCs on SQLite, then frames
    python benches/fuzz.py --examples 5000 --db mariadb --targets rpc
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import psutil  # noqa: E402
from _harness import machine_info, private_server, write_results  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from support import graphs  # noqa: E402
from support.driver import Driver, group_metadata  # noqa: E402
from support.fuzzing import (  # noqa: E402
    IMPRECISE,
    call_raw,
    check_executor_frame,
    executor_frames,
    messages,
    storage_methods,
)
from support.procs import StorageProcess  # noqa: E402


def rpc_campaign(db_url: str, examples: int, workdir: Path) -> dict[str, Any]:
    storage = StorageProcess(db_url, workdir)
    storage.start()
    try:
        driver = Driver(storage).setup()
        job = driver.submit(graphs.diamond(), 3, start=True)
        ids = st.sampled_from([0, 1, driver.rg, job, driver.em, driver.scheduler, 2**64 - 1])
        creds = st.sampled_from([(), tuple(group_metadata(driver.rg, b"s3cret"))])
        methods = storage_methods()
        codes: dict[str, Counter[str]] = {}
        peak = 0
        process = psutil.Process(storage.popen.pid)  # type: ignore[union-attr]

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            nonlocal peak
            service, method, descriptor = data.draw(st.sampled_from(methods))
            if data.draw(st.integers(0, 9)) == 0:
                request: Any = data.draw(st.binary(max_size=512))
            else:
                request = data.draw(messages(descriptor, ids))
            code = call_raw(storage.channel(), service, method, request, data.draw(creds))
            codes.setdefault(method, Counter())[code.name] += 1
            peak = max(peak, process.memory_info().rss)
            assert code not in IMPRECISE, (method, request, code)
            assert storage.alive, "storage died"

        started = time.monotonic()
        run()
        return {
            "examples": examples,
            "seconds": round(time.monotonic() - started, 1),
            "storage_peak_rss_mib": round(peak / 2**20, 1),
            "codes": {method: dict(counter) for method, counter in sorted(codes.items())},
        }
    finally:
        storage.close()
        storage.terminate()


def frames_campaign(examples: int) -> dict[str, Any]:
    tasks = HERE.parent / "tests" / "worker" / "tasks"
    names = [("integration_tasks", "fibonacci"), ("integration_tasks", "always_fail")]
    started = time.monotonic()
    statuses: Counter[int] = Counter()

    @settings(max_examples=examples, deadline=None, database=None)
    @given(frame=executor_frames(names))
    def run(frame: bytes) -> None:
        statuses[check_executor_frame(frame, tasks)] += 1

    run()
    return {
        "examples": examples,
        "seconds": round(time.monotonic() - started, 1),
        "exit_statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000, help="examples per campaign")
    parser.add_argument("--db", choices=("sqlite", "mariadb"), default="sqlite")
    parser.add_argument("--targets", default="rpc,frames", help="rpc, frames or both")
    parser.add_argument("--out", default=str(HERE / "results" / "fuzz.json"))
    args = parser.parse_args()
    targets = set(args.targets.split(","))
    results: dict[str, Any] = {"machine": machine_info(), "db": args.db}
    with tempfile.TemporaryDirectory(prefix="orbweaver-fuzz-") as tmp:
        workdir = Path(tmp)
        if "rpc" in targets:
            if args.db == "mariadb":
                with private_server() as server, server.fresh_database() as url:
                    results["rpc"] = rpc_campaign(url, args.examples, workdir)
            else:
                url = f"sqlite:///{workdir / 'fuzz.db'}"
                results["rpc"] = rpc_campaign(url, args.examples, workdir)
            print(json.dumps({k: v for k, v in results["rpc"].items() if k != "codes"}))
        if "frames" in targets:
            results["frames"] = frames_campaign(max(1, args.examples // 20))
            print(json.dumps(results["frames"]))
    write_results(Path(args.out), results)
    print(f"no finding; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
