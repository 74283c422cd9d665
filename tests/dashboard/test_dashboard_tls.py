"""The dashboard over TLS: it serves HTTPS (its session cookie is then `Secure`) and reaches a
TLS storage with the CA of `$ORBWEAVER_TLS_CA`, as every client does."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dash_support import login_operator, new_browser, text_of
from selenium.webdriver.remote.webdriver import WebDriver

from support.procs import ServiceProcess, StorageProcess
from support.tls import make_certificates

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

OPERATOR = "dashboard-tls-operator-token"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = new_browser(accept_insecure_certs=True)  # the test CA is not the system's
    try:
        yield driver
    finally:
        driver.quit()


def test_https_dashboard_on_a_tls_storage(
    sqlite_url: str, tmp_path: Path, browser: WebDriver
) -> None:
    ca, cert, key = make_certificates(tmp_path)
    storage = StorageProcess(
        sqlite_url,
        tmp_path,
        env={
            "ORBWEAVER_TLS_CERT": str(cert),
            "ORBWEAVER_TLS_KEY": str(key),
            "ORBWEAVER_OPERATOR_TOKEN": OPERATOR,
        },
    )
    storage.start()
    dashboard = ServiceProcess(
        "dashboard",
        [
            "dashboard",
            "--storage",
            storage.address,
            "--listen",
            "127.0.0.1:{port}",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        tmp_path,
        env={"ORBWEAVER_TLS_CA": str(ca)},
    )
    try:
        dashboard.start()
        url = f"https://127.0.0.1:{dashboard.port}/"
        login_operator(browser, url, OPERATOR)
        assert text_of(browser, "who") == "operator"
        assert text_of(browser, "session-id") != "0"
        cookie = browser.get_cookie("orbweaver_session")
        assert cookie is not None
        assert cookie["secure"] is True and cookie["httpOnly"] is True
        assert OPERATOR not in dashboard.logs()
    finally:
        dashboard.terminate()
        storage.terminate()
