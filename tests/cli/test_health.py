"""`orbweaver health ADDRESS`, the check container runtimes and supervisors run: exit code 0 and
`SERVING` from a real storage process (which requires a cluster token for everything else),
exit code 1 with the reason for a server that is not serving, unreachable, gone, or speaking TLS
to a check without the CA; TLS from the same variables as every client."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from orbweaver._rpc import make_server
from support.cli import base_env, cli, free_port, show
from support.procs import StorageProcess
from support.tls import make_certificates

TOKEN = "health-check-token"


@pytest.fixture
def storage(sqlite_url: str, tmp_path: Path) -> Iterator[StorageProcess]:
    proc = StorageProcess(sqlite_url, tmp_path, env={"ORBWEAVER_TOKEN": TOKEN})
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()


def test_a_serving_storage_answers_serving_without_a_token(storage: StorageProcess) -> None:
    proc = cli("health", storage.address)
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.strip() == f"{storage.address}: SERVING (leader)"


def test_a_named_service_is_checked_on_its_own(storage: StorageProcess) -> None:
    proc = cli("health", storage.address, "--service", "orbweaver.v1.JobOrchestrationService")
    assert proc.returncode == 0, show(proc)
    assert "(orbweaver.v1.JobOrchestrationService): SERVING" in proc.stdout

    proc = cli("health", storage.address, "--service", "orbweaver.v1.NoSuchService")
    assert proc.returncode == 1, show(proc)
    assert "not serving: NOT_FOUND" in proc.stderr, show(proc)


def test_a_storage_that_is_gone_fails_the_check(storage: StorageProcess) -> None:
    address = storage.address
    storage.kill()
    proc = cli("health", address, "--timeout", "2s")
    assert proc.returncode == 1, show(proc)
    assert f"{address}: not serving: UNAVAILABLE" in proc.stderr, show(proc)


def test_a_server_reporting_not_serving_fails_the_check() -> None:
    # A real gRPC server with the health service every component has, told it is not serving
    # (what a storage reports until its recovery is complete).
    server = make_server("127.0.0.1:0")
    server.start()
    try:
        server.set_serving("", False)
        proc = cli("health", f"127.0.0.1:{server.port}")
        assert proc.returncode == 1, show(proc)
        assert proc.stderr.strip() == f"127.0.0.1:{server.port}: not serving: NOT_SERVING"
    finally:
        server.stop(0)


def test_nothing_listening_and_bad_settings_exit_1_not_2() -> None:
    address = f"127.0.0.1:{free_port()}"
    proc = cli("health", address, "--timeout", "2s")
    assert proc.returncode == 1, show(proc)
    assert "UNAVAILABLE" in proc.stderr

    proc = cli("health", address, "--timeout", "soon")
    assert proc.returncode == 1, show(proc)
    assert "--timeout: cannot read 'soon' as a duration" in proc.stderr, show(proc)

    proc = cli("health", address, env=base_env(ORBWEAVER_TLS_CA="/nonexistent/ca.pem"))
    assert proc.returncode == 1, show(proc)
    assert "cannot check: FileNotFoundError" in proc.stderr, show(proc)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_comes_from_the_environment(sqlite_url: str, tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    env = {"ORBWEAVER_TLS_CERT": str(cert), "ORBWEAVER_TLS_KEY": str(key), "ORBWEAVER_TOKEN": TOKEN}
    storage = StorageProcess(sqlite_url, tmp_path, env=env)
    storage.start()
    try:
        proc = cli("health", storage.address, env=base_env(ORBWEAVER_TLS_CA=str(ca)))
        assert proc.returncode == 0, show(proc)
        assert proc.stdout.strip() == f"{storage.address}: SERVING (leader)"

        plaintext = cli("health", storage.address, "--timeout", "2s")
        assert plaintext.returncode == 1, show(plaintext)
        assert "not serving" in plaintext.stderr, show(plaintext)
    finally:
        storage.kill()
