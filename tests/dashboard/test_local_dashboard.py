"""What a newcomer does: `orbweaver local --dashboard --demo`, open the printed URL, log in with
the printed token, watch the demo job, submit it again with `orbweaver demo --storage`; and the
dashboard command without its extra says how to install it."""

from __future__ import annotations

import json
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dash_support import login_operator, see, state_of, text_of
from selenium.webdriver.remote.webdriver import WebDriver

from support.cli import ORBWEAVER, base_env

START_TIMEOUT = 120.0


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return out


def _until(lines: queue.Queue[str], pattern: str, seen: list[str]) -> re.Match[str]:
    while True:
        try:
            line = lines.get(timeout=START_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no line matching {pattern!r} in {seen}") from None
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found


def test_local_dashboard_demo(browser: WebDriver, tmp_path: Path) -> None:
    env = base_env(ORBWEAVER_DEMO_DIR=str(tmp_path / "published"))
    args = [
        *ORBWEAVER,
        "local",
        "--listen",
        "127.0.0.1:0",
        "--dashboard",
        "127.0.0.1:0",
        "--demo",
        "--workers",
        "2",
        "--db",
        f"sqlite:///{tmp_path / 'jobs.db'}",
        "--log-dir",
        str(tmp_path / "logs"),
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    try:
        lines = _lines(proc)
        seen: list[str] = []
        exports = _until(lines, r"export (ORBWEAVER_STORAGE=.*)$", seen)[1]
        url = _until(lines, r"dashboard: (http://\S+/) \(log in", seen)[1]
        job_url = _until(lines, r"demo job (\d+) submitted: (\S+)$", seen)
        assert job_url[2] == f"{url}jobs/{job_url[1]}"
        exported = dict(pair.split("=", 1) for pair in shlex.split(exports))
        token = exported["ORBWEAVER_OPERATOR_TOKEN"]

        login_operator(browser, url, token)
        browser.get(job_url[2])
        see(browser, lambda d: text_of(d, "job-state") == "succeeded")
        assert all(state_of(browser, t) == "succeeded" for t in "01234567")
        assert state_of(browser, "commit") == "succeeded"
        # The outputs: the top five words and the number of words.
        assert json.loads(text_of(browser, "outputs")) == [["it", "of", "the", "was", "age"], 70]

        again = subprocess.run(
            [*ORBWEAVER, "demo", "--storage", exported["ORBWEAVER_STORAGE"]],
            env={**env, **exported},
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        assert again.returncode == 0, again.stderr
        second = int(re.search(r"demo job (\d+) submitted", again.stdout)[1])  # type: ignore[index]
        browser.get(url)
        see(browser, lambda d: text_of(d, "jobs-SUCCEEDED") == "2")
        browser.get(f"{url}jobs/{second}")
        assert text_of(browser, "job-state") == "succeeded"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.mark.parametrize(
    "command",
    [["dashboard", "--listen", "127.0.0.1:0"], ["local", "--dashboard", "--workers", "1"]],
)
def test_dashboard_without_its_extra_says_how_to_install_it(command: list[str]) -> None:
    # The extra's modules made unimportable, as in an environment without them; `local` says
    # so before it starts anything.
    code = (
        "import sys\n"
        "for name in ('uvicorn', 'starlette', 'jinja2'):\n"
        "    sys.modules[name] = None\n"
        "from orbweaver.cli import main\n"
        f"sys.exit(main({command!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "pip install 'orbweaver[dashboard]'" in done.stderr


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:notaport"])
def test_dashboard_refuses_a_bad_listen_address(listen: str) -> None:
    done = subprocess.run(
        [*ORBWEAVER, "dashboard", "--listen", listen],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr
