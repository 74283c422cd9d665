"""Both clients over TLS against a real storage process with a certificate: given the CA (as
`security=` or `ORBWEAVER_TLS_CA`) they work, without it they cannot connect."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_support import Runner

import orbweaver as ow
from orbweaver._rpc import Security, TlsConfig
from support.procs import StorageProcess
from support.tls import make_certificates

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

OPERATOR = "tls-operator-token"


@pytest.fixture
def tls_storage(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[StorageProcess, Path]]:
    ca, cert, key = make_certificates(tmp_path)
    env = {
        "ORBWEAVER_TLS_CERT": str(cert),
        "ORBWEAVER_TLS_KEY": str(key),
        "ORBWEAVER_OPERATOR_TOKEN": OPERATOR,
    }
    proc = StorageProcess(sqlite_url, tmp_path, env=env)
    proc.start()
    yield proc, ca
    proc.terminate()


def test_both_clients_speak_tls(
    tls_storage: tuple[StorageProcess, Path], run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, ca = tls_storage
    security = Security(tls=TlsConfig(ca_file=ca))
    with ow.Client(storage.address, operator_token=OPERATOR, security=security) as client:
        assert client.add_resource_group("sync-tls", "pw").name == "sync-tls"

    async def scenario() -> None:
        async with ow.AsyncClient(
            storage.address, operator_token=OPERATOR, security=security
        ) as client:
            assert (await client.add_resource_group("async-tls", "pw")).name == "async-tls"
        async with ow.AsyncClient(
            storage.address, operator_token=OPERATOR, connect_timeout=1
        ) as plain:
            with pytest.raises(ow.Unavailable, match="cannot reach"):
                await plain.resource_groups()
        monkeypatch.setenv("ORBWEAVER_TLS_CA", str(ca))
        async with ow.AsyncClient(storage.address, operator_token=OPERATOR) as from_env:
            names = {g.name for g in await from_env.resource_groups()}
            assert {"sync-tls", "async-tls"} <= names

    run(scenario())
