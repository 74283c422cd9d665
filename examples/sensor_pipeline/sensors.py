"""Tasks of the sensor pipeline example: ingest CSV readings from weather stations into
dataclasses, validate them, stage the clean readings as files, compute per-station statistics and
combine them into one report. A cleanup task removes the staging directory if the job is
cancelled; on success the last task removes it.

Executors import this module from the example's folder (the tasks directory).
"""

from __future__ import annotations

import csv
import errno
import math
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orbweaver as ow

# Plausible ranges; anything outside is a sensor fault (e.g. -999 "no data" sentinels).
TEMPERATURE_RANGE_C = (-60.0, 60.0)
HUMIDITY_RANGE_PCT = (0.0, 100.0)
# Written into the staging directory when it is created: the cleanup task only ever removes a
# directory that carries it, never a directory the pipeline did not create.
STAGING_MARKER = ".sensor-pipeline-staging"
# Seconds each station's statistics step pauses, to simulate slow work (see main.py --throttle).
THROTTLE_ENV = "SENSOR_PIPELINE_THROTTLE"


@dataclass
class Reading:
    time: str  # ISO 8601
    temperature_c: float
    humidity_pct: float


@dataclass
class Batch:
    """One station's readings as ingested, before validation."""

    station: str
    readings: list[Reading]
    unparsable: int  # rows that could not be read at all


@dataclass
class StagedBatch:
    """One station's valid readings, staged as a CSV file in the staging directory."""

    station: str
    path: str
    kept: int
    rejected: int


@dataclass
class StationStats:
    station: str
    readings: int
    rejected: int
    min_c: float
    max_c: float
    mean_c: float
    mean_humidity_pct: float


@dataclass
class Report:
    stations: list[StationStats]  # sorted by station name
    readings: int
    rejected: int
    warmest: str  # station with the highest mean temperature
    coldest: str


# -- staging --------------------------------------------------------------------------------------


def is_staging_dir(path: Path) -> bool:
    return (path / STAGING_MARKER).is_file()


@ow.task
def open_staging(staging_dir: str) -> str:
    """Create the staging directory (an input task: its parameter is graph input 0)."""
    path = Path(staging_dir)
    if not path.is_absolute():
        raise ValueError(f"the staging directory must be an absolute path, got {staging_dir!r}")
    if path.exists() and not is_staging_dir(path) and any(path.iterdir()):
        raise FileExistsError(
            f"{path} exists and is not empty; refusing to use it as a staging directory"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / STAGING_MARKER).touch()
    return str(path)


@ow.task
def remove_staging(ctx: ow.TaskContext) -> None:
    """The cleanup task: runs when the job is cancelled, with the graph inputs (plain values) in
    `ctx.graph_inputs`; the first one is the staging directory. Removing an already removed
    directory is fine, so the task may safely run more than once.

    A staging task of the cancelled job may still be running (cancellation does not interrupt a
    task mid-way), so files can appear or vanish (a temporary file renamed into place) while the
    tree is removed: a file already gone is fine, and the removal is retried until it holds."""
    staging = Path((ctx.graph_inputs or [""])[0])
    if not (staging.is_absolute() and is_staging_dir(staging)):
        return
    for _ in range(50):
        shutil.rmtree(staging, onerror=_ignore_vanished)
        if not staging.exists():
            return
        time.sleep(0.05)
    raise OSError(f"could not remove the staging directory {staging}: files keep appearing")


def _ignore_vanished(func: object, path: str, exc_info: tuple[Any, BaseException, Any]) -> None:
    """`shutil.rmtree`'s error handler: a file that vanished, or a directory that gained a file,
    is left for the next pass; anything else is a real error."""
    exc = exc_info[1]
    if isinstance(exc, FileNotFoundError):
        return
    if isinstance(exc, OSError) and exc.errno == errno.ENOTEMPTY:
        return
    raise exc


# -- ingest, validate, stage ----------------------------------------------------------------------


@ow.task
def load(csv_path: str) -> Batch:
    """Ingest one station's CSV file (``timestamp,temperature_c,humidity_pct``); the station is
    named after the file. Rows that cannot be read are counted, not fatal."""
    path = Path(csv_path)
    readings: list[Reading] = []
    unparsable = 0
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                stamp = datetime.fromisoformat((row["timestamp"] or "").strip())
                reading = Reading(
                    stamp.isoformat(),
                    float(row["temperature_c"] or "nan"),
                    float(row["humidity_pct"] or "nan"),
                )
            except (KeyError, TypeError, ValueError):
                unparsable += 1
                continue
            readings.append(reading)
    return Batch(path.stem, readings, unparsable)


def is_valid(r: Reading) -> bool:
    lo_t, hi_t = TEMPERATURE_RANGE_C
    lo_h, hi_h = HUMIDITY_RANGE_PCT
    return lo_t <= r.temperature_c <= hi_t and lo_h <= r.humidity_pct <= hi_h


@ow.task
def clean(batch: Batch, staging_dir: str) -> StagedBatch:
    """Validate: drop out-of-range values and repeated timestamps (the first one wins), then stage
    the valid readings as a CSV file for the next step."""
    staging = Path(staging_dir)
    if not is_staging_dir(staging):  # never recreate a directory the cleanup task removed
        raise FileNotFoundError(f"the staging directory {staging} is gone")
    seen: set[str] = set()
    kept: list[Reading] = []
    for r in batch.readings:
        if is_valid(r) and r.time not in seen:
            seen.add(r.time)
            kept.append(r)
    target = staging / f"{batch.station}.csv"
    tmp = staging / f".{batch.station}.csv.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerows((r.time, r.temperature_c, r.humidity_pct) for r in kept)
    os.replace(tmp, target)
    rejected = batch.unparsable + len(batch.readings) - len(kept)
    return StagedBatch(batch.station, str(target), len(kept), rejected)


# -- statistics and report ------------------------------------------------------------------------


@ow.task
def station_report(staged: StagedBatch) -> Report:
    """Statistics of one station, read back from its staged file, as a one-station report."""
    with Path(staged.path).open(newline="", encoding="utf-8") as f:
        rows = [Reading(t, float(c), float(h)) for t, c, h in csv.reader(f)]
    if not rows:
        raise ValueError(f"station {staged.station!r} has no valid readings")
    temps = [r.temperature_c for r in rows]
    stats = StationStats(
        staged.station,
        len(rows),
        staged.rejected,
        min(temps),
        max(temps),
        round(math.fsum(temps) / len(temps), 3),
        round(math.fsum(r.humidity_pct for r in rows) / len(rows), 3),
    )
    throttle = float(os.environ.get(THROTTLE_ENV) or 0)
    if throttle > 0:
        time.sleep(throttle)
    return Report([stats], stats.readings, stats.rejected, stats.station, stats.station)


@ow.task
def merge_reports(a: Report, b: Report) -> Report:
    stations = sorted(a.stations + b.stations, key=lambda s: s.station)
    by_mean = sorted(stations, key=lambda s: (s.mean_c, s.station))
    return Report(
        stations,
        a.readings + b.readings,
        a.rejected + b.rejected,
        by_mean[-1].station,
        by_mean[0].station,
    )


@ow.task
def finish(report: Report, staging_dir: str) -> Report:
    """The last task: the staged files are no longer needed once the report exists."""
    staging = Path(staging_dir)
    if is_staging_dir(staging):
        shutil.rmtree(staging)
    return report


# -- the graph ------------------------------------------------------------------------------------


def build_graph(num_stations: int) -> ow.TaskGraph:
    """Graph inputs, in order: the staging directory, then one CSV file per station."""
    if num_stations < 1:
        raise ValueError("the pipeline needs at least one station file")
    g = ow.TaskGraph(cleanup=remove_staging)
    staging = g.add(open_staging)
    reports = []
    for _ in range(num_stations):
        staged = g.add(clean, g.add(load), staging)
        reports.append(g.add(station_report, staged))
    while len(reports) > 1:
        pairs = zip(reports[::2], reports[1::2], strict=False)
        merged = [g.add(merge_reports, a, b) for a, b in pairs]
        if len(reports) % 2:
            merged.append(reports[-1])
        reports = merged
    g.add(finish, reports[0], staging)
    return g
