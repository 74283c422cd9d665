"""Shared fixtures: a private MariaDB server for the test session, fresh databases per test.

Fixtures for any test package:

* ``mariadb_server`` (session): a running private server; ``.host``, ``.port``, ``.socket``,
  ``.user``, ``.server_url`` and ``.create_database() -> url`` / ``.drop_database(url)`` /
  ``.fresh_database()`` (a context manager yielding a URL and dropping the database afterwards).
* ``mariadb_url``: a URL to a fresh, empty database (``orbweaver_test_<random>``), dropped after the
  test. Tests using it are marked ``mariadb``.
* ``sqlite_url``: a URL to a fresh SQLite file under ``tmp_path``.
* ``db_url``: parametrized over ``sqlite`` and ``mariadb`` (ids ``sqlite`` / ``mariadb``).
* ``storage``: a real storage process on ``db_url`` (a test package may override it).

The server is started once per session from the MariaDB binaries on this machine
(``mariadb-install-db`` + ``mariadbd``) in a temporary directory, listening on 127.0.0.1 on a free
port and on a socket, with a password-less ``root``; it is stopped (SIGTERM, then SIGKILL) at the
end of the session. If the binaries or the ``mariadb`` connector are missing the MariaDB tests are
skipped, or fail when ``ORBWEAVER_REQUIRE_MARIADB=1``. ``ORBWEAVER_TEST_MARIADB_URL`` (e.g.
``mariadb://root:pw@127.0.0.1:3306``) uses an existing server instead of starting one; each test
still gets its own database on it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent
try:  # Let the tests run from a plain checkout (no `pip install -e .`).
    import orbweaver.storage.db  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_REPO / "python"))

from support.mariadb_server import (  # noqa: E402
    MariaDBServer,
    MariaDBUnavailable,
    check_available,
    external_server,
    private_server,
)
from support.procs import StorageProcess  # noqa: E402

REQUIRE_MARIADB_ENV = "ORBWEAVER_REQUIRE_MARIADB"
EXTERNAL_MARIADB_ENV = "ORBWEAVER_TEST_MARIADB_URL"


def _require_mariadb() -> bool:
    return os.environ.get(REQUIRE_MARIADB_ENV, "") not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if _require_mariadb():
        pytest.fail(f"MariaDB is required ({REQUIRE_MARIADB_ENV}=1) but {reason}", pytrace=False)
    pytest.skip(f"MariaDB unavailable: {reason}")


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    external = os.environ.get(EXTERNAL_MARIADB_ENV)
    try:
        check_available()
        if external:
            yield external_server(external)
            return
    except MariaDBUnavailable as e:
        _unavailable(str(e))
    with private_server() as server:
        yield server


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer) -> Iterator[str]:
    with mariadb_server.fresh_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'orbweaver.db'}"


@pytest.fixture(
    params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)],
    ids=["sqlite", "mariadb"],
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL, once per backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def storage(db_url: str, tmp_path: Path) -> Iterator[StorageProcess]:
    """A real storage process (`python -m orbweaver storage`) on a fresh database."""
    proc = StorageProcess(db_url, tmp_path)
    proc.start()
    yield proc
    proc.close()
    proc.terminate()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the MariaDB fixtures directly carry the ``mariadb`` marker too."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "mariadb_url" in names or "mariadb_server" in names:
            item.add_marker(pytest.mark.mariadb)
