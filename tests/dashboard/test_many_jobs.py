"""The jobs page over 100,000 jobs, on SQLite and MariaDB: keyset pages on the job id, filters
by state and group. The jobs are written through the storage's DB layer before the storage
starts (then most are made terminal in one UPDATE, so recovery has little to rebuild).

Page times are measured and printed (and recorded in docs/dashboard.md); they are not asserted.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dash_tasks
import pytest
from dash_support import TASKS, login_operator, new_browser, see, text_of
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from orbweaver.local import LocalCluster
from orbweaver.storage.db import MariaDbConfig, open_database, parse_url

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

N_JOBS = 100_000
BATCH = 10_000
PAGES = 6


def _fill(url: str) -> tuple[int, int]:
    """Write N_JOBS jobs: 90% in group "default", 10% in group "other"; every tenth failed, one
    in a hundred cancelled, the rest succeeded (ids of "other": every tenth). Returns the group
    ids."""
    graph = dash_tasks.doubling()
    compressed = graph.compressed()
    inputs = graph.encode_inputs([1])
    db = open_database(url, lead=True)
    try:
        default = db.add_resource_group("default", b"default password")
        other = db.add_resource_group("other", b"other password")
        for _ in range(N_JOBS // BATCH):
            db.register_jobs(default, compressed, [(inputs, None)] * (BATCH - BATCH // 10))
            db.register_jobs(other, compressed, [(inputs, None)] * (BATCH // 10))
    finally:
        db.close()
    statement = (
        "UPDATE jobs SET state = CASE WHEN id % 100 = 7 THEN 'Cancelled' "
        "WHEN id % 10 = 3 THEN 'Failed' ELSE 'Succeeded' END, "
        "error_message = CASE WHEN id % 10 = 3 AND id % 100 <> 7 THEN 'task 0 failed' END, "
        "ended_at = created_at"
    )
    config = parse_url(url)
    if isinstance(config, MariaDbConfig):
        import mariadb  # type: ignore[import-not-found]

        conn = mariadb.connect(
            host=config.host,
            port=config.port,
            user=config.user,
            password=config.password or "",
            database=config.database,
            unix_socket=config.unix_socket,
        )
        try:
            cur = conn.cursor()
            cur.execute(statement)
            conn.commit()
        finally:
            conn.close()
    else:
        with contextlib.closing(sqlite3.connect(config.path)) as conn:
            conn.execute(statement)
            conn.commit()
    return default, other


@pytest.fixture
def big_cluster(db_url: str) -> Iterator[tuple[LocalCluster, int, int]]:
    default, other = _fill(db_url)
    with LocalCluster(workers=1, db=db_url, tasks_dir=TASKS, dashboard="127.0.0.1:0") as c:
        yield c, default, other


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = new_browser()
    try:
        yield driver
    finally:
        driver.quit()


def _page(driver: WebDriver) -> tuple[list[int], float, float]:
    """The job ids on the page, the server's read time and the browser's time for the page
    (navigation start to the page loaded), in milliseconds."""
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.job-row")
    ids = [int(r.get_attribute("data-job") or 0) for r in rows]
    server_ms = float(text_of(driver, "page-time").split()[3])
    nav: Any = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return n.loadEventEnd > 0 ? n.loadEventEnd - n.startTime : n.duration;"
    )
    return ids, server_ms, float(nav)


def _walk(driver: WebDriver, start: str, n: int) -> tuple[list[int], list[tuple[float, float]]]:
    driver.get(start)
    ids, server, page = _page(driver)
    seen, times = list(ids), [(server, page)]
    for _ in range(n - 1):
        old = driver.find_element(By.ID, "page-older")
        old.click()
        see(driver, lambda d, last=seen[-1]: _page(d)[0][:1] and _page(d)[0][0] < last)
        ids, server, page = _page(driver)
        seen += ids
        times.append((server, page))
    return seen, times


def test_hundred_thousand_jobs_page_by_id(
    big_cluster: tuple[LocalCluster, int, int],
    browser: WebDriver,
    db_url: str,
    tmp_path: Path,
) -> None:
    cluster, _, other = big_cluster
    url = cluster.dashboard_url
    assert url is not None
    login_operator(browser, url, cluster.operator_token)
    see(browser, lambda d: text_of(d, "jobs-SUCCEEDED") != "0")
    counts = {s: int(text_of(browser, f"jobs-{s}")) for s in ("SUCCEEDED", "FAILED", "CANCELLED")}
    assert sum(counts.values()) == N_JOBS
    assert counts["CANCELLED"] == N_JOBS // 100

    # Newest first, every page continuing below the last: no job skipped, none twice.
    ids, newest = _walk(browser, url + "jobs", PAGES)
    assert ids == list(range(N_JOBS, N_JOBS - 50 * PAGES, -1))
    # Deep in the table: a page as cheap as the first.
    ids, deep = _walk(browser, f"{url}jobs?before=1001", 2)
    assert ids == list(range(1000, 900, -1))
    # Filters: a state, a group, both; their pages are keyset pages too.
    ids, failed = _walk(browser, f"{url}jobs?state=FAILED", 3)
    assert ids == [i for i in range(N_JOBS, 0, -1) if i % 10 == 3 and i % 100 != 7][:150]
    in_other = [i for i in range(N_JOBS, 0, -1) if (i - 1) % BATCH >= BATCH - BATCH // 10]
    ids, group = _walk(browser, f"{url}jobs?group={other}", 3)
    assert ids == in_other[:150]
    ids, both = _walk(browser, f"{url}jobs?state=CANCELLED&group={other}", 2)
    assert ids == [i for i in in_other if i % 100 == 7][:100]
    # The search box goes to the job.
    browser.get(url + "jobs")
    box = browser.find_element(By.CSS_SELECTOR, "form.search input[name=q]")
    box.send_keys("4242\n")
    see(browser, lambda d: d.current_url.endswith("/jobs/4242"))
    assert text_of(browser, "job-state") in ("succeeded", "failed", "cancelled")

    measured = {
        "backend": "mariadb" if db_url.startswith("mariadb") else "sqlite",
        "jobs": N_JOBS,
        "newest_pages": newest,
        "deep_pages": deep,
        "failed_pages": failed,
        "group_pages": group,
        "cancelled_in_group_pages": both,
    }
    (tmp_path / "page_times.json").write_text(json.dumps(measured, indent=2))
    worst = max(t[1] for t in newest + deep + failed + group + both)
    print(f"\n{measured['backend']}: {N_JOBS} jobs, slowest page load {worst:.0f} ms: {measured}")
