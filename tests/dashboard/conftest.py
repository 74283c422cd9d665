"""Fixtures of the dashboard tests: a real local cluster with its dashboard, and a browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the orbweaver[dashboard] extra is not installed")
pytest.importorskip("selenium", reason="the orbweaver[dashboard] extra is not installed")

from dash_support import TASKS, Screenshots, new_browser
from selenium.webdriver.remote.webdriver import WebDriver

from orbweaver.local import LocalCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(workers=3, tasks_dir=TASKS, dashboard="127.0.0.1:0") as c:
        yield c


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = new_browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Screenshots:
    return Screenshots(tmp_path)
