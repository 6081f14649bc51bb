"""Client and AsyncClient against secured nodes: HTTP Basic credentials (-pw, a
bcrypt htpasswd file), HTTPS verified with `ca_file`, and client certificates
(-cas) with `cert_file`/`key_file`. Every refusal is checked next to an accepted
control on the same node, so a test cannot pass because the client was broken.
Certificates, password files and node processes come from tests/security."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from changeagent.client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    RetryPolicy,
    Unauthorized,
)
from tests.security.pki import Issued, Pki, make_pki
from tests.security.support import Node, htpasswd

# Refusals at the TLS layer are connection failures: retried, so keep them short.
FAST_RETRY = RetryPolicy(attempts_max=2, backoff_initial_s=0.01, backoff_max_s=0.02)
PASSWORD = "s3cret-password"

StartNode = Callable[..., Node]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("client-pki"))


@pytest.fixture
def passwords(tmp_path: Path) -> Path:
    """An htpasswd file (bcrypt, by Apache's htpasswd) with alice's password."""
    path = tmp_path / "htpasswd"
    htpasswd(path, "alice", PASSWORD, "-B")
    return path


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    """Start nodes with these arguments (each its own data directory); killed by pid."""
    started: list[Node] = []

    def start(*arguments: str, expect: tuple[str, ...] = ("http",)) -> Node:
        node = Node(tmp_path / f"data{len(started)}", list(arguments), expect)
        started.append(node)
        return node.start()

    try:
        yield start
    finally:
        for node in started:
            node.kill()


def https(start_node: StartNode, pki: Pki, *extra: str) -> str:
    """An HTTPS-only node's URL (the server certificate names 127.0.0.1)."""
    arguments = ["-sp", "0", "-cert", str(pki.server.cert), "-key", str(pki.server.key)]
    node = start_node(*arguments, *extra, expect=("https",))
    return f"https://127.0.0.1:{node.ports['https']}"


def client_with(url: str, ca: Path, issued: Issued | None, **options: Any) -> Client:
    """A Client verifying with `ca` that presents `issued` (if any) as its certificate."""
    cert_file, key_file = (str(issued.cert), str(issued.key)) if issued else (None, None)
    return Client(url, ca_file=str(ca), cert_file=cert_file, key_file=key_file, **options)


def round_trip(client: Client) -> None:
    """Post, get, page and follow to the end: every kind of request goes through."""
    tag = uuid.uuid4().hex
    posted = [client.post({"n": n}, tags=[tag]) for n in range(3)]
    assert client.get(posted[0].id) == posted[0]
    assert client.changes(tags=[tag]).changes == tuple(posted)
    assert list(client.follow(tags=[tag], stop_at_end=True)) == posted


def test_basic_credentials_with_a_bcrypt_password_file(
    start_node: StartNode, passwords: Path
) -> None:
    node = start_node("-p", "0", "-pw", str(passwords))
    url = f"http://127.0.0.1:{node.ports['http']}"
    with Client(url, auth=("alice", PASSWORD)) as client:
        round_trip(client)
    for auth in (("alice", "wrong-password"), ("mallory", PASSWORD), None):
        with Client(url, auth=auth) as client:
            with pytest.raises(Unauthorized) as raised:
                client.post("refused")
            assert raised.value.status == 401
            with pytest.raises(Unauthorized):
                next(iter(client.follow(block_s=1)))
            assert client.health().ok  # GET /health needs no credentials
    with Client(url, auth=("alice", PASSWORD)) as client:
        assert all(change.data != "refused" for change in client.changes(limit=1000).changes)

    async def async_client() -> None:
        async with AsyncClient(url, auth=("alice", PASSWORD)) as client:
            change = await client.post("async", tags=["async"])
            assert await client.get(change.id) == change
        async with AsyncClient(url, auth=("alice", "wrong-password")) as client:
            with pytest.raises(Unauthorized):
                await client.changes()

    asyncio.run(async_client())


def test_https_verified_with_ca_file(start_node: StartNode, pki: Pki) -> None:
    url = https(start_node, pki)
    with Client(url, ca_file=str(pki.ca.cert_file)) as client:
        round_trip(client)
        assert client.health().ok
    # Without the test CA the server's certificate cannot be verified.
    with Client(url, retry=FAST_RETRY) as client:
        with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
            client.changes()
        with pytest.raises(ConnectionFailed):
            client.health()
    with (
        Client(url, ca_file=str(pki.wrong_ca.cert_file), retry=FAST_RETRY) as client,
        pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.post("never sent")


def test_client_certificates_with_cas(start_node: StartNode, pki: Pki) -> None:
    url = https(start_node, pki, "-cas", str(pki.ca.cert_file))
    ca = pki.ca.cert_file
    with client_with(url, ca, pki.client) as client:
        round_trip(client)
        assert client.health().ok
    # No certificate, one from another CA, an expired one: the handshake fails.
    for presented in (None, pki.wrong_ca_client, pki.expired_client):
        with client_with(url, ca, presented, retry=FAST_RETRY) as client:
            with pytest.raises(ConnectionFailed):
                client.changes()
            with pytest.raises(ConnectionFailed):
                client.health()
    ca_file, cert_file, key_file = str(ca), str(pki.client.cert), str(pki.client.key)

    async def async_client() -> None:
        async with AsyncClient(
            url, ca_file=ca_file, cert_file=cert_file, key_file=key_file
        ) as client:
            change = await client.post("async over mutual TLS")
            assert await client.get(change.id) == change
        async with AsyncClient(url, ca_file=ca_file, retry=FAST_RETRY) as client:
            with pytest.raises(ConnectionFailed):
                await client.changes()

    asyncio.run(async_client())


def test_credentials_and_client_certificate_together(
    start_node: StartNode, pki: Pki, passwords: Path
) -> None:
    url = https(start_node, pki, "-cas", str(pki.ca.cert_file), "-pw", str(passwords))
    ca = pki.ca.cert_file
    with client_with(url, ca, pki.client, auth=("alice", PASSWORD)) as client:
        round_trip(client)
    with client_with(url, ca, pki.client, auth=("alice", "wrong-password")) as client:
        with pytest.raises(Unauthorized):
            client.changes()
        assert client.health().ok  # the certificate is enough for /health
    with (
        client_with(url, ca, None, auth=("alice", PASSWORD), retry=FAST_RETRY) as client,
        pytest.raises(ConnectionFailed),
    ):
        client.changes()  # the password alone is not
