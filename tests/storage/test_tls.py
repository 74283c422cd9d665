"""TLS between components: a storage process with a certificate serves TLS clients (with the
cluster token) and refuses plaintext ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from orbweaver import errors
from orbweaver._proto import orbweaver_pb2 as pb
from orbweaver._proto import orbweaver_pb2_grpc as pb_grpc
from orbweaver._rpc import Security, TlsConfig, call_with_retry, make_channel
from support.procs import StorageProcess
from support.tls import make_certificates

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def test_tls_and_token(sqlite_url: str, tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    env = {
        "ORBWEAVER_TLS_CERT": str(cert),
        "ORBWEAVER_TLS_KEY": str(key),
        "ORBWEAVER_TOKEN": "tls-token",
    }
    proc = StorageProcess(sqlite_url, tmp_path, env=env)
    proc.start()
    try:
        address = f"127.0.0.1:{proc.port}"
        secure = make_channel(address, Security(token="tls-token", tls=TlsConfig(ca_file=ca)))
        stub = pb_grpc.SessionManagementServiceStub(secure)
        reply = call_with_retry(lambda: stub.GetSession(pb.Void(), timeout=10), deadline=20)
        assert reply.session_id > 0
        secure.close()

        wrong_token = make_channel(address, Security(token="nope", tls=TlsConfig(ca_file=ca)))
        with pytest.raises(errors.Unauthenticated):
            call_with_retry(
                lambda: pb_grpc.SessionManagementServiceStub(wrong_token).GetSession(
                    pb.Void(), timeout=10
                ),
                deadline=20,
            )
        wrong_token.close()

        plain = grpc.insecure_channel(address)
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.SessionManagementServiceStub(plain).GetSession(pb.Void(), timeout=5)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        plain.close()
    finally:
        proc.kill()
