"""Helpers of the dashboard tests: Debian's chromium driven headless through selenium
(chromedriver), and what a person sees in it.

Screenshots go to each test's tmp dir; with ``ORBWEAVER_SCREENSHOTS_DIR`` set (e.g. ``docs/img``)
the two the docs use are written there too (the command is in docs/dashboard.md)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the orbweaver[dashboard] extra is not installed")
pytest.importorskip("selenium", reason="the orbweaver[dashboard] extra is not installed")

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

TASKS = Path(__file__).resolve().parent / "tasks"
sys.path.insert(0, str(TASKS))

REQUIRE_BROWSER_ENV = "ORBWEAVER_REQUIRE_BROWSER"
SCREENSHOTS_ENV = "ORBWEAVER_SCREENSHOTS_DIR"
# Generous bounds on waits for what a person would see: they catch a hang, they measure nothing.
SEE_TIMEOUT = 60.0


def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    return (chromium, driver) if chromium and driver else None


def new_browser(*, accept_insecure_certs: bool = False) -> WebDriver:
    paths = _browser_paths()
    if paths is None:
        message = "chromium and chromedriver are needed (apt-get install chromium chromium-driver)"
        if os.environ.get(REQUIRE_BROWSER_ENV, "") not in ("", "0"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    options.accept_insecure_certs = accept_insecure_certs
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(paths[1]))


def see(driver: WebDriver, what: Callable[[WebDriver], Any], timeout: float = SEE_TIMEOUT) -> Any:
    """Wait until `what` is truthy in the page (a person looking at it). An element missing, or
    replaced while it was read (the page navigated or re-rendered it), is looked at again."""
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(what)


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def login_operator(driver: WebDriver, url: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(url + "login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-operator-submit").click()
    see(driver, lambda d: d.find_elements(By.ID, "job-counts"))


def login_group(driver: WebDriver, url: str, group: str, password: str) -> None:
    driver.delete_all_cookies()
    driver.get(url + "login")
    driver.find_element(By.ID, "group").send_keys(group)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-group-submit").click()
    see(driver, lambda d: d.find_elements(By.ID, "job-counts"))


class Screenshots:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        docs = os.environ.get(SCREENSHOTS_ENV)
        self.docs = Path(docs) if docs else None

    def take(self, driver: WebDriver, name: str, *, docs: bool = False) -> Path:
        path = self.tmp / f"{name}.png"
        driver.save_screenshot(str(path))
        if docs and self.docs is not None:
            self.docs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.docs / f"dashboard-{name}.png")
        return path


def fill_of(driver: WebDriver, task: str) -> str:
    """The colour a person sees on a DAG node (its rectangle's computed fill)."""
    rect = driver.find_element(By.CSS_SELECTOR, f"#node-{task} rect")
    return str(rect.value_of_css_property("fill"))


def state_of(driver: WebDriver, task: str) -> str:
    return str(driver.find_element(By.ID, f"node-{task}").get_attribute("data-state"))


def wait_terminal(job: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not job.state.is_terminal:
        assert time.monotonic() < deadline, f"job {job.id} did not finish"
        time.sleep(0.05)
