"""The multi-host cluster fixture: MariaDB, storage, scheduler, two worker hosts and a client,
each in its own network namespace (`support.multihost`). Tests skip where namespaces cannot be
made (not root, no `ip`), or fail there when `ORBWEAVER_REQUIRE_NETNS=1` (CI runs as root)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.multihost import MultiHostCluster
from support.netns import NetnsUnavailable, check_available, sweep_leftovers

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
REQUIRE_NETNS_ENV = "ORBWEAVER_REQUIRE_NETNS"


@pytest.fixture(scope="session")
def netns_network() -> Iterator[None]:
    """Namespaces can be made here; leftovers of dead runs are swept before and after."""
    try:
        check_available()
    except NetnsUnavailable as e:
        if os.environ.get(REQUIRE_NETNS_ENV, "") not in ("", "0", "false", "no"):
            pytest.fail(f"network namespaces are required ({REQUIRE_NETNS_ENV}=1): {e}",
                        pytrace=False)  # fmt: skip
        pytest.skip(f"no network namespaces: {e}")
    sweep_leftovers()
    yield
    sweep_leftovers()


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    """Where tasks leave their `started-<host>-<x>` markers."""
    path = tmp_path / "markers"
    path.mkdir()
    return path


@pytest.fixture
def cluster(netns_network: None, tmp_path: Path, markers: Path) -> Iterator[MultiHostCluster]:
    with MultiHostCluster(tmp_path / "cluster", TASKS_DIR, markers=markers) as c:
        yield c
