"""pymongo over TLS with SCRAM users, against a server started with --tls-mode requireTLS and
--auth, with a test CA made at test time by openssl: the right credentials work (SCRAM-SHA-256
and SCRAM-SHA-1), and a wrong password, an unknown user, a CA that did not sign the server's
certificate and a plaintext client each fail clearly."""

import subprocess
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

from conftest import MangroveServer


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(root: Path, name: str) -> Path:
    """A CA and a server certificate for 127.0.0.1 it signs; returns the CA's directory."""
    d = root / name
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(d, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", f"/CN=test CA {name}")
    openssl(d, "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    (d / "server.pem").write_bytes((d / "server.crt").read_bytes() + (d / "server.key").read_bytes())
    return d


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    return make_ca(root, "ours"), make_ca(root, "theirs")


@pytest.fixture(scope="module")
def tls_server(pki):
    ours, _ = pki
    srv = MangroveServer(["--tls-mode", "requireTLS", "--tls-certificate-key-file",
                          str(ours / "server.pem"), "--auth"])
    # The localhost exception: the first user, over TLS.
    with MongoClient(srv.uri, tls=True, tlsCAFile=str(ours / "ca.pem"),
                     serverSelectionTimeoutMS=5000) as c:
        c.admin.command("createUser", "app", pwd="correct horse", roles=["readWriteAnyDatabase"])
    yield srv
    assert srv.stop() == 0


def connect(srv, ca: Path | None, **kw) -> MongoClient:
    tls = {"tls": True, "tlsCAFile": str(ca)} if ca else {}
    return MongoClient(srv.uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, **tls, **kw)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_user_over_tls(tls_server, pki, mechanism):
    ours, _ = pki
    with connect(tls_server, ours / "ca.pem", username="app", password="correct horse",
                 authMechanism=mechanism) as c:
        c.shop.orders.insert_one({"mechanism": mechanism})
        assert c.shop.orders.count_documents({"mechanism": mechanism}) == 1
        status = c.admin.command("connectionStatus")["authInfo"]
        assert status["authenticatedUsers"] == [{"user": "app", "db": "admin"}]


@pytest.mark.parametrize("user,password", [("app", "wrong"), ("nobody", "correct horse")])
def test_bad_credentials_fail_with_18(tls_server, pki, user, password):
    ours, _ = pki
    with connect(tls_server, ours / "ca.pem", username=user, password=password) as c:
        with pytest.raises(OperationFailure) as e:
            c.shop.orders.find_one()
        assert e.value.code == 18


def test_other_ca_and_plaintext_cannot_connect(tls_server, pki):
    _, theirs = pki
    for c in (connect(tls_server, theirs / "ca.pem"), connect(tls_server, None)):
        with c, pytest.raises(ServerSelectionTimeoutError):
            c.admin.command("ping")
    assert tls_server.alive()
