"""The dashboard in a real browser (headless chromium) against a real local cluster: what a
person sees on each page, live updates without a reload, the access rules."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import dash_tasks
import pytest
from dash_support import (
    Screenshots,
    fill_of,
    login_group,
    login_operator,
    see,
    state_of,
    text_of,
    wait_terminal,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from orbweaver import JobState
from orbweaver.local import LocalCluster

pytestmark = pytest.mark.timeout(600)


def _url(cluster: LocalCluster) -> str:
    url = cluster.dashboard_url
    assert url is not None
    return url


def _colour(driver: WebDriver, var: str) -> str:
    """The computed colour of a CSS variable of the stylesheet, as the node fills report it."""
    return str(
        driver.execute_script(
            "const el = document.createElement('div');"
            "el.style.color = getComputedStyle(document.documentElement)"
            f".getPropertyValue('--{var}').trim();"
            "document.body.appendChild(el);"
            "const c = getComputedStyle(el).color; el.remove(); return c;"
        )
    )


def _job_ids(driver: WebDriver) -> list[int]:
    """The jobs the jobs page lists, in order."""
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.job-row")
    return [int(r.get_attribute("data-job") or 0) for r in rows]


def _fetch(driver: WebDriver, path: str) -> list[Any]:
    """[status, JSON body] of a GET from the current page (its cookies, its origin)."""
    return list(
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then(async r => done([r.status, await r.json()]));",
            path,
        )
    )


def _overview(driver: WebDriver) -> dict[str, Any]:
    """The overview page's feed, fetched by the page's own session."""
    return dict(
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/overview').then(r => r.json()).then(done);"
        )
    )


def _number(text: str) -> float:
    """A figure on the page; 0 for the placeholder shown before the first one."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def _refusal(browser: WebDriver) -> str:
    """The login page's error, once the answer to the form replaced the page (a click on submit
    may return before the new page is there)."""
    see(browser, lambda d: d.find_elements(By.ID, "login-error"))
    return text_of(browser, "login-error")


def test_missing_or_wrong_credentials_are_refused(
    cluster: LocalCluster, browser: WebDriver
) -> None:
    url = _url(cluster)
    browser.delete_all_cookies()
    browser.get(url)
    assert browser.current_url == url + "login"  # no session: the login form
    browser.get(url + "jobs")
    assert browser.current_url == url + "login"
    assert _fetch(browser, "/api/overview") == [401, {"error": "not logged in"}]

    browser.get(url + "login")
    browser.find_element(By.ID, "token").send_keys("not-the-operator-token")
    browser.find_element(By.ID, "login-operator-submit").click()
    assert "login refused" in _refusal(browser)
    assert browser.get_cookie("orbweaver_session") is None

    browser.get(url + "login")
    browser.find_element(By.ID, "group").send_keys("default")
    browser.find_element(By.ID, "password").send_keys("wrong password")
    browser.find_element(By.ID, "login-group-submit").click()
    assert "login refused" in _refusal(browser)
    assert browser.get_cookie("orbweaver_session") is None

    # A made-up session id is no session.
    browser.add_cookie({"name": "orbweaver_session", "value": "made-up", "path": "/"})
    browser.get(url + "jobs")
    assert browser.current_url == url + "login"


def test_session_cookie_is_http_only_and_strict(cluster: LocalCluster, browser: WebDriver) -> None:
    login_operator(browser, _url(cluster), cluster.operator_token)
    cookie = browser.get_cookie("orbweaver_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cluster.operator_token not in cookie["value"]
    # Scripts in the page cannot read it.
    assert "orbweaver_session" not in browser.execute_script("return document.cookie")
    # Nothing the dashboard logged holds the token.
    assert cluster.operator_token not in cluster.logs("dashboard")


def test_overview_counts_match_the_cluster(
    cluster: LocalCluster, browser: WebDriver, screenshots: Screenshots
) -> None:
    client = cluster.client()
    jobs = [client.submit(dash_tasks.doubling(), [i]) for i in range(6)]
    failed = client.submit(dash_tasks.failing(), [1])
    for job in [*jobs, failed]:
        wait_terminal(job)
    expected = Counter(j.state.name for j in client.jobs(limit=10_000))
    login_operator(browser, _url(cluster), cluster.operator_token)
    for state in JobState:
        see(browser, lambda d, s=state: text_of(d, f"jobs-{s.name}") == str(expected[s.name]))
    # One execution manager, with the cluster's executor processes.
    see(browser, lambda d: text_of(d, "em-count") == "1")
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#ems tbody td")]
    assert cells[2] == str(cluster.workers)
    assert text_of(browser, "queue-task") == "0"
    assert "job(s) in" in text_of(browser, "recovery")
    # The page follows the cluster: more jobs finish, the counts and the rate chart move.
    more = client.submit_many(dash_tasks.doubling(), [[i] for i in range(40)])
    client.gather(more, timeout=120)
    succeeded = str(expected["SUCCEEDED"] + len(more))
    see(browser, lambda d: text_of(d, "jobs-SUCCEEDED") == succeeded)
    see(browser, lambda d: _number(text_of(d, "rate-peak")) > 0)
    # ... and back to nothing once they are done.
    see(browser, lambda d: text_of(d, "rate-now") == "0.0")
    assert browser.find_elements(By.CSS_SELECTOR, "#rate-chart polyline")
    screenshots.take(browser, "overview", docs=True)
    # A page opened now shows the minutes before it: the dashboard kept the samples.
    browser.refresh()
    see(browser, lambda d: _number(text_of(d, "rate-peak")) > 0)


def test_running_job_changes_colour_live(
    cluster: LocalCluster, browser: WebDriver, screenshots: Screenshots, tmp_path: Path
) -> None:
    client = cluster.client()
    job = client.submit(dash_tasks.gated_diamond(), [str(tmp_path)])
    url = _url(cluster)
    login_operator(browser, url, cluster.operator_token)
    browser.get(f"{url}jobs/{job.id}")
    # A mark in this page's memory: it is still there at the end, so nothing reloaded.
    browser.execute_script("window.__sameDocument = 'yes';")
    running, succeeded, pending = (_colour(browser, v) for v in ("running", "succeeded", "pending"))
    see(browser, lambda d: fill_of(d, "0") == running)
    assert fill_of(browser, "3") == pending
    # Why the last task waits: its parents.
    see(
        browser,
        lambda d: "pending parents" in d.find_element(By.CSS_SELECTOR, "#waiting").text,
    )

    (tmp_path / "first").touch()
    see(browser, lambda d: fill_of(d, "0") == succeeded)
    see(browser, lambda d: fill_of(d, "1") == running and fill_of(d, "2") == running)
    screenshots.take(browser, "job-running", docs=True)
    # The overview's feed counts them as the execution manager's work in flight.
    see(browser, lambda d: [em["in_flight"] for em in _overview(d)["execution_managers"]] == [2])

    (tmp_path / "left").touch()
    see(browser, lambda d: state_of(d, "1") == "succeeded")
    assert state_of(browser, "2") == "running"
    (tmp_path / "right").touch()
    (tmp_path / "join").touch()
    see(browser, lambda d: text_of(d, "job-state") == "succeeded")
    assert all(fill_of(browser, t) == succeeded for t in "0123")
    see(browser, lambda d: str(tmp_path) in text_of(d, "outputs"))
    assert browser.execute_script("return window.__sameDocument") == "yes"
    assert job.result(timeout=60) == [f"{tmp_path}"]


def test_failed_task_shows_its_traceback(
    cluster: LocalCluster, browser: WebDriver, screenshots: Screenshots
) -> None:
    client = cluster.client()
    job = client.submit(dash_tasks.failing(), [21])
    wait_terminal(job)
    url = _url(cluster)
    login_operator(browser, url, cluster.operator_token)
    browser.get(f"{url}jobs/{job.id}")
    assert text_of(browser, "job-state") == "failed"
    assert text_of(browser, "error-type") == "ValueError"
    assert text_of(browser, "error-message") == "boom 42: the input was refused"
    assert text_of(browser, "error-func") == "dash_tasks.boom"
    traceback = text_of(browser, "error-traceback")
    assert traceback.startswith("Traceback (most recent call last)")
    assert 'raise ValueError(f"boom {x}: the input was refused")' in traceback
    assert fill_of(browser, "1") == _colour(browser, "failed")
    assert fill_of(browser, "0") == _colour(browser, "succeeded")
    screenshots.take(browser, "job-failed")


def test_jobs_filtered_by_state_and_group(cluster: LocalCluster, browser: WebDriver) -> None:
    operator = cluster.client()
    group = operator.add_resource_group("filters", "filters password")
    done = operator.submit(dash_tasks.doubling(), [1], resource_group=group)
    failed = operator.submit(dash_tasks.failing(), [1], resource_group=group)
    for job in (done, failed):
        wait_terminal(job)
    url = _url(cluster)
    login_operator(browser, url, cluster.operator_token)
    browser.get(url + "jobs")
    groups = Select(browser.find_element(By.ID, "filter-group"))
    groups.select_by_visible_text(f"filters ({group.id})")
    browser.find_element(By.ID, "filter-apply").click()
    see(browser, lambda d: f"group={group.id}" in d.current_url)
    assert _job_ids(browser) == [failed.id, done.id]
    Select(browser.find_element(By.ID, "filter-state")).select_by_value("FAILED")
    browser.find_element(By.ID, "filter-apply").click()
    see(browser, lambda d: "state=FAILED" in d.current_url)
    assert _job_ids(browser) == [failed.id]


def test_cancel_cancels(cluster: LocalCluster, browser: WebDriver, tmp_path: Path) -> None:
    client = cluster.client()
    job = client.submit(dash_tasks.gated_diamond(), [str(tmp_path)])
    url = _url(cluster)
    try:
        login_operator(browser, url, cluster.operator_token)
        browser.get(f"{url}jobs/{job.id}")
        see(browser, lambda d: state_of(d, "0") == "running")
        browser.find_element(By.ID, "cancel").click()
        see(browser, lambda d: text_of(d, "job-state") == "cancelled")
        assert job.state == JobState.CANCELLED
        assert not browser.find_element(By.ID, "cancel-form").is_displayed()
    finally:
        for gate in ("first", "left", "right", "join"):  # free the executors
            (tmp_path / gate).touch()


def _post_cancel(browser: WebDriver, job_id: int, csrf: str) -> int:
    """POST the cancel form from the page itself (same origin), with `csrf` as its token."""
    return int(
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const body = new URLSearchParams({csrf_token: arguments[1]});"
            "fetch('/jobs/' + arguments[0] + '/cancel', {method: 'POST', body: body,"
            " redirect: 'manual'}).then(r => done(r.status));",
            job_id,
            csrf,
        )
    )


def test_cancel_needs_the_form_token(
    cluster: LocalCluster, browser: WebDriver, tmp_path: Path
) -> None:
    client = cluster.client()
    job = client.submit(dash_tasks.gated_diamond(), [str(tmp_path)])
    url = _url(cluster)
    try:
        login_operator(browser, url, cluster.operator_token)
        browser.get(f"{url}jobs/{job.id}")
        assert _post_cancel(browser, job.id, "forged") == 403
        assert _post_cancel(browser, job.id, "") == 403
        assert job.state == JobState.RUNNING
    finally:
        for gate in ("first", "left", "right", "join"):
            (tmp_path / gate).touch()
    wait_terminal(job)
    assert job.state == JobState.SUCCEEDED


def test_read_only_dashboard_hides_and_refuses_cancel(
    cluster: LocalCluster, browser: WebDriver, tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orbweaver",
            "dashboard",
            "--storage",
            cluster.address,
            "--listen",
            "127.0.0.1:0",
            "--read-only",
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "dashboard.log").open("w"),
    )
    gates = tmp_path / "gates"
    gates.mkdir()
    job = cluster.client().submit(dash_tasks.gated_diamond(), [str(gates)])
    try:
        see(browser, lambda _: ready.exists() and ready.read_text())
        url = f"http://127.0.0.1:{json.loads(ready.read_text())['port']}/"
        login_operator(browser, url, cluster.operator_token)
        assert "read-only" in text_of(browser, "who")
        browser.get(f"{url}jobs/{job.id}")
        see(browser, lambda d: state_of(d, "0") == "running")
        assert browser.find_elements(By.ID, "cancel") == []
        csrf = str(
            browser.execute_script(
                "return document.querySelector('form.logout input[name=csrf_token]').value"
            )
        )
        assert _post_cancel(browser, job.id, csrf) == 403
        assert job.state == JobState.RUNNING
    finally:
        for gate in ("first", "left", "right", "join"):
            (gates / gate).touch()
        proc.terminate()
        proc.wait(30)
    wait_terminal(job)
    assert job.state == JobState.SUCCEEDED


def test_resource_group_sees_only_its_jobs(
    cluster: LocalCluster, browser: WebDriver, screenshots: Screenshots
) -> None:
    operator = cluster.client()
    group = operator.add_resource_group("team-a", "team-a password")
    theirs = operator.submit(dash_tasks.doubling(), [5], resource_group=group)
    ours = operator.submit(dash_tasks.doubling(), [6])
    wait_terminal(theirs)
    wait_terminal(ours)
    url = _url(cluster)
    login_group(browser, url, "team-a", "team-a password")
    assert text_of(browser, "who") == "resource group team-a"
    # Their counts only, and no cluster-wide figures.
    assert text_of(browser, "jobs-SUCCEEDED") == "1"
    assert browser.find_elements(By.ID, "ems") == []
    browser.get(url + "jobs")
    assert _job_ids(browser) == [theirs.id]
    assert browser.find_elements(By.ID, "filter-group") == []  # nothing to choose from
    # Another group's job is answered like a job that does not exist.
    browser.get(f"{url}jobs/{ours.id}")
    assert "not found" in text_of(browser, "problem").lower()
    status, body = _fetch(browser, f"/api/jobs/{ours.id}")
    assert status == 404 and "not found" in body["error"].lower()
    browser.get(f"{url}jobs?group={cluster.resource_group.id}")
    assert "cannot list" in text_of(browser, "problem")
    browser.get(url + "groups")
    names = [
        c.text for c in browser.find_elements(By.CSS_SELECTOR, "#groups tbody td:nth-child(2)")
    ]
    assert names == ["team-a"]
    browser.get(f"{url}jobs/{theirs.id}")
    assert text_of(browser, "job-state") == "succeeded"
    assert text_of(browser, "outputs").split() == ["[", "10", "]"]


def test_no_credential_in_urls_and_logout(cluster: LocalCluster, browser: WebDriver) -> None:
    url = _url(cluster)
    login_operator(browser, url, cluster.operator_token)
    assert cluster.operator_token not in browser.current_url
    links = [a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")]
    assert links and not any(cluster.operator_token in link for link in links)
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    see(browser, lambda d: d.current_url == url + "login")
    browser.get(url + "jobs")
    assert browser.current_url == url + "login"


def test_static_files_and_security_headers(cluster: LocalCluster) -> None:
    url = _url(cluster)
    with urllib.request.urlopen(url + "static/dashboard.css") as r:
        assert r.status == 200
        assert b"--succeeded" in r.read()
    try:
        urllib.request.urlopen(url + "login")
    except urllib.error.HTTPError as exc:  # pragma: no cover - the form answers 200
        raise AssertionError(exc.code) from exc
    with urllib.request.urlopen(url + "login") as r:
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"


def test_a_big_graph_is_listed_not_drawn(cluster: LocalCluster, browser: WebDriver) -> None:
    n = 2500
    job = cluster.client().submit(dash_tasks.wide(n), list(range(n)), start=False)
    url = _url(cluster)
    login_operator(browser, url, cluster.operator_token)
    browser.get(f"{url}jobs/{job.id}")
    assert text_of(browser, "job-state") == "ready"
    assert browser.find_elements(By.ID, "dag") == []
    assert "not drawn" in browser.find_element(By.TAG_NAME, "main").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#waiting tbody tr")
    assert len(rows) == 1001 and rows[-1].text == f"… and {n - 1000} more"
    assert rows[0].text.split()[:3] == ["0", "pending", "job"]
    job.cancel()


def test_a_retried_task_shows_its_failed_attempts(
    cluster: LocalCluster, browser: WebDriver, tmp_path: Path
) -> None:
    job = cluster.client().submit(dash_tasks.retried(), [str(tmp_path)])
    url = _url(cluster)
    login_operator(browser, url, cluster.operator_token)
    browser.get(f"{url}jobs/{job.id}")

    def row(d: WebDriver) -> list[str]:
        # Read at once: the live feed replaces the rows.
        return list(
            d.execute_script(
                "const r = document.querySelector(\"#waiting tbody tr[data-task='0']\");"
                "return r ? Array.from(r.cells, c => c.textContent) : [];"
            )
        )

    try:
        # Third run: two failed attempts, one live instance.
        see(browser, lambda d: row(d)[1:2] == ["running"] and row(d)[4:] == ["2", "1"])
        assert "2 failed attempt(s)" in str(
            browser.execute_script("return document.querySelector('#node-0 title').textContent")
        )
    finally:
        (tmp_path / "flaky").touch()
    assert job.result(timeout=60) == [str(tmp_path)]
