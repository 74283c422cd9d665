"""Download files from an unreliable mirror, with retries and checksum verification.

    python examples/flaky_downloads/main.py DEST_DIR [--fail-first N] [--corrupt NAME]
                                            [--retries R] [--json]

The program starts a small HTTP mirror on 127.0.0.1 that answers the first N requests for each
file with "503 Service Unavailable", then submits one download task per file of its manifest.
Each task is retried (`@ow.task(retries=3)`, or --retries) until it gets the file and its SHA-256
matches the manifest. With --corrupt NAME the mirror serves damaged bytes for NAME: every attempt
fails the checksum, and once the retries are used up the job fails with a readable error.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import downloads

import orbweaver as ow

HERE = Path(__file__).resolve().parent


def mirror_files() -> dict[str, bytes]:
    """What the mirror serves (deterministic, so the manifest below is stable)."""
    rng = random.Random(2025)
    rows = "\n".join(f"{i},station-{i % 7},{rng.uniform(-5, 30):.2f}" for i in range(400))
    return {
        "readings.csv": ("id,station,temperature_c\n" + rows + "\n").encode(),
        "firmware.bin": rng.randbytes(64 * 1024),
        "NOTICE.txt": b"Sample data for the Orbweaver flaky-downloads example.\n",
    }


class Mirror:
    """A threaded HTTP server that fails the first `fail_first` requests for each file with 503
    and serves damaged bytes for the files in `corrupt`. It records every answer it gives."""

    def __init__(self, files: dict[str, bytes], fail_first: int, corrupt: set[str]) -> None:
        self.files = files
        self.fail_first = fail_first
        self.corrupt = corrupt
        self.answers: dict[str, list[int]] = {name: [] for name in files}
        self._lock = threading.Lock()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                body = mirror.files.get(name)
                with mirror._lock:
                    answers = mirror.answers.setdefault(name, [])
                    if body is None:
                        status = 404
                    elif len(answers) < mirror.fail_first:
                        status = 503
                    else:
                        status = 200
                    answers.append(status)
                if status != 200:
                    self.send_error(status)
                    return
                assert body is not None
                if name in mirror.corrupt:
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])  # one flipped byte
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the answers are reported at the end instead

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest_dir", metavar="DEST_DIR", type=Path, help="where files are stored")
    parser.add_argument(
        "--fail-first",
        type=int,
        default=2,
        metavar="N",
        help="503 answers the mirror gives for each file first (default 2)",
    )
    parser.add_argument(
        "--corrupt",
        action="append",
        default=[],
        metavar="NAME",
        help="serve damaged bytes for this file (repeatable)",
    )
    parser.add_argument("--retries", type=int, help="retries per download (default: 3)")
    parser.add_argument("--workers", type=int, default=2, help="executor processes (default 2)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the job")
    args = parser.parse_args(argv)
    files = mirror_files()
    unknown = set(args.corrupt) - set(files)
    if unknown:
        parser.error(f"--corrupt: no such file {sorted(unknown)}; files: {sorted(files)}")
    args.dest_dir.mkdir(parents=True, exist_ok=True)
    dest = str(args.dest_dir.resolve())
    manifest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    out: dict[str, Any] = {}
    say = print if not args.json else (lambda *a, **k: None)

    with Mirror(files, args.fail_first, set(args.corrupt)) as mirror:
        say(
            f"mirror {mirror.url}: {len(files)} files; the first {args.fail_first} requests for"
            f" each get a 503; damaged: {', '.join(args.corrupt) or 'none'}"
        )
        graph = downloads.build_graph(len(files), retries=args.retries)
        inputs: list[Any] = []
        for name, digest in manifest.items():
            inputs += [f"{mirror.url}/{name}", digest, dest]
        with ow.LocalCluster(workers=args.workers, tasks_dir=HERE) as cluster:
            started = time.perf_counter()
            job = cluster.client().submit(graph, inputs)
            state = job.wait(timeout=args.timeout)
            out.update(job=job.id, state=state.name, requests=mirror.answers)
            say(f"job {job.id} {state.name} in {time.perf_counter() - started:.1f} s")
            if state == ow.JobState.SUCCEEDED:
                results: list[downloads.Downloaded] = job.outputs()
                out["files"] = [dataclasses.asdict(d) for d in results]
                for d in results:
                    answers = " ".join(map(str, mirror.answers[d.name]))
                    say(
                        f"  {d.name:<14} {d.size:>7,} bytes  sha256 {d.sha256[:16]}..."
                        f"  mirror answers: {answers}"
                    )
                say(f"stored in {dest}")
            else:
                out["error"] = job.error()
                print(f"error: {out['error']}", file=sys.stderr)
                for name, answers in mirror.answers.items():
                    say(f"  {name:<14} mirror answers: {' '.join(map(str, answers))}")
    if args.json:
        print(json.dumps(out, indent=2))
    return 0 if state == ow.JobState.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
