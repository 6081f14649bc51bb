"""HTTPS on a real node (-sp with -cert/-key, -cas for client certificates).

Certificates come from tests/security/pki.py: a CA, a rogue CA, and an expired
client certificate. Refusals are checked next to an accepted control, so a test
cannot pass because the client was broken.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.conftest import StartNode
from tests.security.pki import Issued, Pki
from tests.security.support import Node, basic, htpasswd, run_cli


def client_tls(pki: Pki, certificate: Issued | None = None) -> ssl.SSLContext:
    """Trusts the test CA, checks the host name; presents `certificate` when given."""
    context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    if certificate is not None:
        context.load_cert_chain(str(certificate.cert), str(certificate.key))
    return context


def https_node(start_node: StartNode, pki: Pki, *extra: str) -> Node:
    arguments = ["-sp", "0", "-cert", str(pki.server.cert), "-key", str(pki.server.key)]
    return start_node(*arguments, *extra, expect=("https",))


def post(node: Node, document: str, tls: ssl.SSLContext | None) -> int:
    headers = {"Content-Type": "application/json"}
    answer = node.request("POST", "/changes", document, headers, tls=tls)
    assert answer.status == 200, answer.body
    return int(answer.json()["_id"])


def test_https_only_with_sp_alone(start_node: StartNode, pki: Pki) -> None:
    node = https_node(start_node, pki)
    assert "http" not in node.ports  # as in ChangeAgent: -sp without -p is HTTPS only
    tls = client_tls(pki)
    change_id = post(node, '{"data":"over tls"}', tls)
    answer = node.request("GET", f"/changes/{change_id}", tls=tls)
    assert answer.json()["data"] == "over tls"


def test_plain_and_tls_listeners_serve_the_same_api(start_node: StartNode, pki: Pki) -> None:
    node = https_node(start_node, pki, "-p", "0")
    assert set(node.ports) == {"http", "https"}
    assert node.ports["http"] != node.ports["https"]
    change_id = post(node, '{"data":"plain"}', None)
    answer = node.request("GET", f"/changes/{change_id}", tls=client_tls(pki))
    assert answer.json()["data"] == "plain"


def test_writes_and_reads_share_one_tls_connection(start_node: StartNode, pki: Pki) -> None:
    """Plain writes are answered ahead of aiohttp (api/front_door.py); a read on the
    same TLS connection hands it to aiohttp, which must go on where it left off."""
    node = https_node(start_node, pki)
    connection = http.client.HTTPSConnection(
        "localhost", node.ports["https"], timeout=30, context=client_tls(pki)
    )
    json_type = {"Content-Type": "application/json"}
    try:
        stored = []
        for document in ('{"data":"first"}', '{"data":"second"}'):
            connection.request("POST", "/changes", body=document, headers=json_type)
            answer = connection.getresponse()
            assert answer.status == 200
            stored.append(answer.read())
        connection.request("GET", "/changes?since=0")
        answer = connection.getresponse()
        assert answer.status == 200
        assert [change["data"] for change in json.loads(answer.read())["changes"]] == [
            "first",
            "second",
        ]
        connection.request("POST", "/changes", body='{"data":"third"}', headers=json_type)
        answer = connection.getresponse()
        assert answer.status == 200
        assert json.loads(answer.read())["data"] == "third"
        assert [json.loads(body)["data"] for body in stored] == ["first", "second"]
    finally:
        connection.close()


def test_basic_auth_over_https(start_node: StartNode, pki: Pki, tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    htpasswd(passwd, "alice", "s3cret-password", "-B")
    node = https_node(start_node, pki, "-pw", str(passwd))
    tls = client_tls(pki)
    assert node.request("GET", "/changes", tls=tls).status == 401
    answer = node.request("GET", "/changes", headers=basic("alice", "s3cret-password"), tls=tls)
    assert answer.status == 200


def refused(node: Node, tls: ssl.SSLContext) -> OSError:
    """The request fails at the TLS layer: no HTTP answer at all."""
    with pytest.raises(OSError) as caught:
        node.request("GET", "/changes", tls=tls)
    return caught.value


def test_client_certificates_required_with_cas(start_node: StartNode, pki: Pki) -> None:
    node = https_node(start_node, pki, "-cas", str(pki.ca.cert_file))
    assert node.request("GET", "/changes", tls=client_tls(pki, pki.client)).status == 200
    refused(node, client_tls(pki))  # no certificate
    refused(node, client_tls(pki, pki.wrong_ca_client))
    refused(node, client_tls(pki, pki.expired_client))
    assert node.request("GET", "/health", tls=client_tls(pki, pki.client)).status == 200


def test_openapi_declares_client_certificates_with_cas(
    start_node: StartNode, pki: Pki, tmp_path: Path
) -> None:
    """mutualTLS is an OpenAPI 3.1 scheme: the document says 3.1.0 (its schemas
    then spell `nullable` as a "null" type); with -pw too, both are required."""
    passwd = tmp_path / "passwd"
    htpasswd(passwd, "alice", "s3cret-password", "-B")
    node = https_node(start_node, pki, "-cas", str(pki.ca.cert_file), "-pw", str(passwd))
    tls = client_tls(pki, pki.client)
    credentials = basic("alice", "s3cret-password")
    document = node.request("GET", "/openapi.json", headers=credentials, tls=tls).json()
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"basicAuth", "mutualTLS"}
    assert schemes["mutualTLS"]["type"] == "mutualTLS"
    assert document["security"] == [{"basicAuth": [], "mutualTLS": []}]
    assert document["paths"]["/health"]["get"]["security"] == [{"mutualTLS": []}]
    assert document["openapi"] == "3.1.0"
    assert "nullable" not in node.request("GET", "/openapi.json", headers=credentials, tls=tls).text


def test_without_cas_no_client_certificate_is_needed(start_node: StartNode, pki: Pki) -> None:
    node = https_node(start_node, pki)
    assert node.request("GET", "/changes", tls=client_tls(pki)).status == 200


def tls11_client() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # OpenSSL 3 refuses TLS 1.1 below security level 0: allow it on the client, so
    # that the refusal measured is the node's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


@pytest.fixture
def tls11_server(pki: Pki) -> Iterator[int]:
    """A bare TLS server that does accept TLS 1.1: the control for the client above."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def accept_one() -> None:
        try:
            connection, _ = listener.accept()
            with context.wrap_socket(connection, server_side=True):
                pass
        except OSError:
            pass

    thread = threading.Thread(target=accept_one, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(30)


def handshake(port: int, context: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
    ):
        return wrapped.version()


def test_tls_1_1_refused_1_2_accepted(start_node: StartNode, pki: Pki, tls11_server: int) -> None:
    assert handshake(tls11_server, tls11_client()) == "TLSv1.1"  # the client can speak 1.1
    node = https_node(start_node, pki)
    # uvloop's TLS closes the connection without an alert: any TLS failure will do,
    # since the same client completes a 1.1 handshake with the control server above.
    with pytest.raises(OSError):
        handshake(node.ports["https"], tls11_client())
    tls12 = client_tls(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(node.ports["https"], tls12) == "TLSv1.2"


def test_unusable_certificate_files_exit_2(tmp_path: Path, pki: Pki) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    result = run_cli(
        "-d", str(tmp_path / "data"), "-sp", "0", "-cert", str(not_pem), "-key", str(pki.server.key)
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("changeagent: -cert/-key/-cas: cannot load")
    assert not (tmp_path / "data").exists()  # refused before storage opened


def test_feeds_stream_over_tls_with_a_client_certificate(start_node: StartNode, pki: Pki) -> None:
    node = https_node(start_node, pki, "-cas", str(pki.ca.cert_file))
    tls = client_tls(pki, pki.client)
    first = post(node, '{"data":"first"}', tls)
    connection = http.client.HTTPSConnection(
        "localhost", node.ports["https"], context=tls, timeout=30
    )
    try:
        connection.request("GET", f"/changes?feed=eventsource&since={first - 1}")
        answer = connection.getresponse()
        assert answer.status == 200
        second = post(node, '{"data":"second"}', tls)
        lines = [answer.readline() for _ in range(8)]
        assert lines[0] == f"id: {first}\n".encode() and lines[4] == f"id: {second}\n".encode()
    finally:
        connection.close()
