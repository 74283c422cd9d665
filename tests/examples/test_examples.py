"""The examples under examples/, run as real programs (each starts its own LocalCluster: storage,
scheduler, an execution manager and executor processes) on copies of their data in a temporary
directory. Expected results are computed here, independently, from the same input files."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import orbweaver as ow
from orbweaver._core import TASK_CLEANUP, TASK_COMMIT

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
RUN_TIMEOUT = 240


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    paths = [str(REPO / "python"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name / "main.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def import_example(name: str, module: str) -> Any:
    """Import an example's task module (as its executors do, from the example's folder)."""
    folder = str(EXAMPLES / name)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return __import__(module)


# -------------------------------------------------------------------------------------------------
# log_mapreduce
# -------------------------------------------------------------------------------------------------

EXTRA_LOG = """\
192.0.2.1 - alice [12/Mar/2025:10:00:00 +0000] "GET /search?q=a&page=2 HTTP/1.1" 200 100 "-" "x"
192.0.2.1 - - [12/Mar/2025:10:00:01 +0000] "HEAD /health HTTP/1.1" 204 - "-" "kube-probe/1.29"

192.0.2.2 - - [12/Mar/2025:10:00:02 +0000] "GET /search HTTP/2.0" 503 0 "-" "x"
this is not an access log line
"""


def parse_line(line: str) -> tuple[str, str, int, int] | None:
    """(client, path, status, bytes) of a Combined Log Format line; None when malformed. Written
    without the example's regular expression, on purpose."""
    parts = line.split('"', 2)
    if len(parts) != 3:
        return None
    head, request, rest = parts
    if "[" not in head or not head.rstrip().endswith("]"):
        return None
    words = request.split()
    if len(words) < 2 or not (words[0].isalpha() and words[0].isupper()):
        return None
    fields = rest.split()
    if len(fields) < 2 or len(fields[0]) != 3 or not fields[0].isdigit():
        return None
    if fields[1] != "-" and not fields[1].isdigit():
        return None
    size = 0 if fields[1] == "-" else int(fields[1])
    return head.split(" ", 1)[0], words[1].split("?", 1)[0], int(fields[0]), size


def expected_log_summary(files: list[Path]) -> dict[str, Any]:
    status: Counter[int] = Counter()
    paths: Counter[str] = Counter()
    clients: Counter[str] = Counter()
    requests = malformed = size = 0
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                parsed = parse_line(line)
                if parsed is None:
                    malformed += 1
                    continue
                requests += 1
                clients[parsed[0]] += 1
                paths[parsed[1]] += 1
                status[parsed[2]] += 1
                size += parsed[3]

    def top(c: Counter[str]) -> list[dict[str, Any]]:
        ranked = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        return [{"key": k, "requests": n} for k, n in ranked]

    return {
        "files": len(files),
        "requests": requests,
        "malformed": malformed,
        "bytes_served": size,
        "status": {str(code): n for code, n in sorted(status.items())},
        "top_paths": top(paths),
        "top_clients": top(clients),
    }


def test_log_mapreduce_counts_and_publishes_atomically(tmp_path: Path, sqlite_url: str) -> None:
    logs = tmp_path / "logs"
    shutil.copytree(EXAMPLES / "log_mapreduce" / "sample_logs", logs)
    rotated = logs / "access.log.2"  # a compressed rotated log, as logrotate leaves them
    with gzip.open(logs / "access.log.2.gz", "wt", encoding="utf-8") as f:
        f.write(rotated.read_text(encoding="utf-8"))
    rotated.unlink()
    (logs / "access.log.3").write_text(EXTRA_LOG, encoding="utf-8")
    (logs / "README.txt").write_text("not a log file: its name has no '.log'\n")
    files = sorted(p for p in logs.iterdir() if ".log" in p.name)
    assert len(files) == 4

    # The destination already holds an older report, also reachable through a hard link: an
    # atomic publication replaces the directory entry and leaves the old inode untouched.
    pub = tmp_path / "published"
    pub.mkdir()
    out = pub / "summary.json"
    out.write_text("previous report\n")
    os.link(out, pub / "previous.json")
    old_inode = out.stat().st_ino

    proc = run_example(
        "log_mapreduce", str(logs), str(out), "--workers", "2", "--db", sqlite_url, cwd=tmp_path
    )
    assert proc.returncode == 0, show(proc)
    assert "SUCCEEDED" in proc.stdout, show(proc)
    assert f"published     {out}" in proc.stdout, show(proc)

    published = json.loads(out.read_text())
    job_id = published.pop("job")
    assert isinstance(job_id, int) and job_id >= 1
    expected = expected_log_summary(files)
    assert published == expected
    assert expected["malformed"] >= 2 and expected["status"]["204"] == 1  # the extra file counted
    assert f"requests      {expected['requests']} from 4 files" in proc.stdout

    assert out.stat().st_ino != old_inode
    assert (pub / "previous.json").read_text() == "previous report\n"
    assert sorted(p.name for p in pub.iterdir()) == ["previous.json", "summary.json"]  # no temps
    assert Path(sqlite_url.removeprefix("sqlite:///")).is_file()  # --db was used


def test_log_mapreduce_commit_task_is_idempotent(tmp_path: Path) -> None:
    """The commit task may run more than once (at-least-once delivery): each run writes the same
    bytes through a temporary file and leaves nothing else behind. Called in-process."""
    logstats = import_example("log_mapreduce", "logstats")
    summary = logstats.Summary(
        2, 10, 1, 5000, {200: 9, 404: 1}, [logstats.Hit("/", 7)], [logstats.Hit("192.0.2.1", 10)]
    )
    # The commit task sees the job outputs as plain msgpack values: a dataclass is a list.
    plain = [2, 10, 1, 5000, {200: 9, 404: 1}, [["/", 7]], [["192.0.2.1", 10]]]
    assert logstats.Summary.from_plain(plain) == summary
    out = tmp_path / "summary.json"
    texts = []
    for instance in (1, 2):
        ctx = ow.TaskContext(42, TASK_COMMIT, instance, 1, job_outputs=[plain, str(out)])
        assert ctx.is_commit
        logstats.publish(ctx)
        texts.append(out.read_bytes())
    assert texts[0] == texts[1]
    assert json.loads(texts[0])["status"] == {"200": 9, "404": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.parametrize(
    ("destination", "error", "message"),
    [
        ("relative/summary.json", ValueError, "must be an absolute path"),
        ("{tmp}/missing/summary.json", FileNotFoundError, "directory {tmp}/missing does not exist"),
        ("{tmp}", IsADirectoryError, "is a directory"),
    ],
    ids=["relative", "missing-dir", "directory"],
)
def test_log_mapreduce_rejects_a_bad_destination(
    tmp_path: Path, destination: str, error: type[Exception], message: str
) -> None:
    """The input task that fails the job early (before any log is read) when the result could
    not be published. Called in-process."""
    logstats = import_example("log_mapreduce", "logstats")
    with pytest.raises(error) as exc:
        logstats.check_destination(destination.format(tmp=tmp_path))
    assert message.format(tmp=tmp_path) in str(exc.value)
    assert logstats.check_destination(str(tmp_path / "x.json")) == str(tmp_path / "x.json")


def test_log_mapreduce_without_logs_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_example("log_mapreduce", str(tmp_path), str(tmp_path / "out.json"), cwd=tmp_path)
    assert proc.returncode == 2, show(proc)
    assert "no log files" in proc.stderr


# -------------------------------------------------------------------------------------------------
# sensor_pipeline
# -------------------------------------------------------------------------------------------------

LAB_CSV = """\
timestamp,temperature_c,humidity_pct
2025-03-12T00:00:00,21.0,40.0
2025-03-12T01:00:00,23.0,50.0
2025-03-12T01:00:00,99.0,50.0
2025-03-12T02:00:00,22.0,45.0
2025-03-12T03:00:00,75.0,45.0
"""


def expected_station(path: Path) -> dict[str, Any]:
    seen: set[str] = set()
    kept: list[tuple[float, float]] = []
    rejected = 0
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                when = datetime.fromisoformat(row["timestamp"].strip()).isoformat()
                temp, hum = float(row["temperature_c"]), float(row["humidity_pct"])
            except ValueError:
                rejected += 1
                continue
            if not (-60 <= temp <= 60 and 0 <= hum <= 100) or when in seen:
                rejected += 1
                continue
            seen.add(when)
            kept.append((temp, hum))
    temps = [t for t, _ in kept]
    return {
        "station": path.stem,
        "readings": len(kept),
        "rejected": rejected,
        "min_c": min(temps),
        "max_c": max(temps),
        "mean_c": pytest.approx(math.fsum(temps) / len(temps), abs=1e-3),
        "mean_humidity_pct": pytest.approx(math.fsum(h for _, h in kept) / len(kept), abs=1e-3),
    }


def sensor_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES / "sensor_pipeline" / "sample_data", data)
    (data / "lab.csv").write_text(LAB_CSV)
    return data


def test_sensor_pipeline_report(tmp_path: Path, sqlite_url: str) -> None:
    data = sensor_data(tmp_path)
    staging = tmp_path / "staging"
    proc = run_example(
        "sensor_pipeline", str(data), "--json", "--staging", str(staging), "--db", sqlite_url,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, show(proc)
    outcome = json.loads(proc.stdout)
    assert outcome["state"] == "SUCCEEDED"
    report = outcome["report"]
    expected = [expected_station(p) for p in sorted(data.glob("*.csv"))]
    assert report["stations"] == expected
    assert report["readings"] == sum(s["readings"] for s in expected)
    assert report["rejected"] == sum(s["rejected"] for s in expected)
    by_mean = sorted(expected, key=lambda s: s["mean_c"].expected)
    assert (report["warmest"], report["coldest"]) == (by_mean[-1]["station"], "hilltop")
    lab = next(s for s in report["stations"] if s["station"] == "lab")
    assert (lab["readings"], lab["rejected"], lab["min_c"], lab["max_c"]) == (3, 2, 21.0, 23.0)
    assert lab["mean_c"] == pytest.approx(22.0)
    # On success the last task removed the staging directory.
    assert outcome["staging"] == str(staging) and not outcome["staging_exists"]
    assert not staging.exists()


def test_sensor_pipeline_cancel_runs_the_cleanup_task(tmp_path: Path) -> None:
    data = sensor_data(tmp_path)
    staging = tmp_path / "staging"
    proc = run_example(
        "sensor_pipeline", str(data), "--json", "--staging", str(staging),
        "--cancel-after", "0.2", "--throttle", "3", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, show(proc)
    outcome = json.loads(proc.stdout)
    assert outcome["state"] == "CANCELLED"
    assert "report" not in outcome
    assert outcome["staged_before_cancel"] >= 1  # the directory existed, with staged files
    assert not outcome["staging_exists"]
    assert not staging.exists()


def test_sensor_pipeline_cleanup_task_only_removes_its_staging_directory(tmp_path: Path) -> None:
    sensors = import_example("sensor_pipeline", "sensors")
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me")
    sensors.remove_staging(ow.TaskContext(1, TASK_CLEANUP, 1, 1, graph_inputs=[str(foreign)]))
    assert (foreign / "data.txt").read_text() == "keep me"
    with pytest.raises(FileExistsError, match="not empty"):
        sensors.open_staging(str(foreign))

    staging = Path(sensors.open_staging(str(tmp_path / "staging")))
    (staging / "north.csv").write_text("x")
    ctx = ow.TaskContext(1, TASK_CLEANUP, 1, 1, graph_inputs=[str(staging), "north.csv"])
    assert ctx.is_cleanup
    sensors.remove_staging(ctx)
    assert not staging.exists()
    sensors.remove_staging(ctx)  # a second run is harmless


# -------------------------------------------------------------------------------------------------
# flaky_downloads
# -------------------------------------------------------------------------------------------------


def test_flaky_downloads_retries_until_success(tmp_path: Path) -> None:
    dest = tmp_path / "downloads"
    proc = run_example("flaky_downloads", str(dest), "--fail-first", "2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, show(proc)
    outcome = json.loads(proc.stdout)
    assert outcome["state"] == "SUCCEEDED"
    names = ["readings.csv", "firmware.bin", "NOTICE.txt"]
    # Two 503 answers per file, then the third attempt (second retry) succeeded.
    assert outcome["requests"] == {name: [503, 503, 200] for name in names}
    assert [f["name"] for f in outcome["files"]] == names
    for f in outcome["files"]:
        data = (dest / f["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"])
    assert (dest / "NOTICE.txt").read_text().startswith("Sample data for the Orbweaver")
    assert sorted(p.name for p in dest.iterdir()) == sorted(names)  # no partial files


def test_flaky_downloads_fails_with_a_readable_error(tmp_path: Path) -> None:
    dest = tmp_path / "downloads"
    proc = run_example(
        "flaky_downloads", str(dest), "--corrupt", "firmware.bin", "--retries", "1",
        "--fail-first", "0", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, show(proc)
    outcome = json.loads(proc.stdout)
    assert outcome["state"] == "FAILED"
    error = outcome["error"]
    assert "downloads.ChecksumMismatch: firmware.bin: expected sha256" in error, error
    assert "Traceback" in error and "downloads.py" in error  # where it was raised
    assert f"error: {error}" in proc.stderr
    assert outcome["requests"]["firmware.bin"] == [200, 200]  # the attempt and one retry
    assert not (dest / "firmware.bin").exists()
    assert not [p for p in dest.iterdir() if p.name.endswith(".part")]
