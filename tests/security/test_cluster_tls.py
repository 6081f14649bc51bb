"""Cluster traffic over mutual TLS on the cluster port (-cp with -ccert/-ckey/-cca).

Real processes on loopback. Members hold certificates signed by the cluster CA
(each usable as TLS server and client, since a member both listens and dials).
Strangers hold a self-signed certificate, one from another CA, or an expired one
from the right CA: they can be neither added nor talk Raft to a member. Every
refusal sits next to an accepted control, so a test cannot pass because the
client itself was broken.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.security.pki import Authority, Issued, Pki, make_authority
from tests.security.support import Node
from tests.support.cluster import LOOPBACK, Cluster, ClusterNode, free_port
from tests.support.server import Response, wait_until

ONE_DAY = datetime.timedelta(days=1)
CONVERGE_TIMEOUT_S = 30.0
STRANGERS = ("self-signed", "other-ca", "expired")


# Certificates -------------------------------------------------------------------------


def _write(directory: Path, name: str, cert: x509.Certificate, key: Any) -> Issued:
    issued = Issued(directory / f"{name}.pem", directory / f"{name}.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return issued


def _member_builder(name: str, key: Any, valid_days: tuple[int, int]) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + valid_days[0] * ONE_DAY)
        .not_valid_after(now + valid_days[1] * ONE_DAY)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
    )


def member_certificate(
    authority: Authority, directory: Path, name: str, valid_days: tuple[int, int] = (-1, 2)
) -> Issued:
    """A member's certificate: signed by `authority`, for TLS server and client use."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _member_builder(name, key, valid_days)
        .issuer_name(authority.cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(authority.key, hashes.SHA256())
    )
    return _write(directory, name, cert, key)


def self_signed(directory: Path, name: str) -> Issued:
    """A certificate that vouches for itself (its own CA file is itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _member_builder(name, key, (-1, 2))
    cert = (
        builder.issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, cert, key)


@dataclass(frozen=True)
class Stranger:
    """A would-be member: its certificate and the CA file it trusts."""

    certificate: Issued
    ca_file: Path

    def arguments(self) -> list[str]:
        cert, key = str(self.certificate.cert), str(self.certificate.key)
        return ["-ccert", cert, "-ckey", key, "-cca", str(self.ca_file)]


@dataclass(frozen=True)
class ClusterPki:
    ca: Authority
    directory: Path
    strangers: dict[str, Stranger]

    def member(self, name: str) -> Issued:
        return member_certificate(self.ca, self.directory, f"member-{name}")


@pytest.fixture(scope="module")
def cluster_pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPki:
    directory = tmp_path_factory.mktemp("cluster-pki")
    ca = make_authority(directory, "cluster-ca")
    other_ca = make_authority(directory, "other-cluster-ca")
    lone = self_signed(directory, "self-signed-stranger")
    strangers = {
        "self-signed": Stranger(lone, lone.cert),
        "other-ca": Stranger(
            member_certificate(other_ca, directory, "other-ca-stranger"), other_ca.cert_file
        ),
        "expired": Stranger(
            member_certificate(ca, directory, "expired-stranger", valid_days=(-3, -1)), ca.cert_file
        ),
    }
    return ClusterPki(ca, directory, strangers)


def tls_cluster(tmp_path: Path, cluster_pki: ClusterPki, size: int) -> Cluster:
    """`size` nodes on -cp, each with its own member certificate (not started)."""
    # "{data_dir}" becomes each node's data directory: base/n1 -> base/n1.pem.
    arguments = ["-ccert", "{data_dir}.pem", "-ckey", "{data_dir}.key"]
    arguments += ["-cca", str(cluster_pki.ca.cert_file)]
    cluster = Cluster(tmp_path, size, arguments, use_cluster_port=True)
    for node in cluster.nodes:
        issued = cluster_pki.member(node.name)
        node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{node.data_dir}.pem").write_bytes(issued.cert.read_bytes())
        Path(f"{node.data_dir}.key").write_bytes(issued.key.read_bytes())
    return cluster


def wait_cluster_port(log: Any, port: int | None) -> None:
    """Until the node says its TLS cluster port listens: it logs that line after the
    API's "listening on http..." (which is all the process helpers wait for)."""
    line = f"cluster port listening on tls://127.0.0.1:{port}"
    wait_until(lambda: line in "".join(log()), CONVERGE_TIMEOUT_S, 0.02)


def start_members(*nodes: ClusterNode) -> None:
    for node in nodes:
        node.start()
    for node in nodes:
        server = node.server
        assert server is not None
        wait_cluster_port(lambda server=server: server.log, node.cluster_port)


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Cluster | ClusterNode | Node]]:
    """Everything started here is killed by pid at the end."""
    running: list[Cluster | ClusterNode | Node] = []
    try:
        yield running
    finally:
        for item in running:
            item.kill()


def wait_identical(lists: Any, expected: list[str]) -> list[list[dict[str, Any]]]:
    """Until every node lists exactly the `expected` data, in the same order."""

    def same() -> list[list[dict[str, Any]]] | None:
        current = lists()
        data = [[change["data"] for change in changes] for changes in current]
        return current if all(item == expected for item in data) else None

    found: list[list[dict[str, Any]]] = wait_until(same, CONVERGE_TIMEOUT_S, 0.05)
    return found


# 1. Clusters over mutual TLS ----------------------------------------------------------


@pytest.mark.parametrize("size", [2, 3])
def test_cluster_over_mutual_tls(
    tmp_path: Path, cluster_pki: ClusterPki, started: list[Any], size: int
) -> None:
    cluster = tls_cluster(tmp_path, cluster_pki, size)
    started.append(cluster)
    start_members(*cluster.nodes)
    cluster.form()
    members = cluster.nodes[0].request("GET", "/cluster/members").json()
    assert sorted(members.values()) == sorted(node.address for node in cluster.nodes)

    expected = []
    for number, follower in enumerate(cluster.followers()):
        answer = follower.post_change({"data": f"via follower {number}"})
        assert answer.status == 200, answer.body
        expected.append(f"via follower {number}")
    answer = cluster.leader().post_change({"data": "via leader"})
    assert answer.status == 200, answer.body
    expected.append("via leader")

    lists = wait_identical(cluster.lists, expected)
    assert len(lists) == size and all(changes == lists[0] for changes in lists)


# 2 and 3. Strangers cannot join -------------------------------------------------------


def start_stranger(tmp_path: Path, stranger: Stranger) -> ClusterNode:
    node = ClusterNode("stranger", tmp_path / "stranger", free_port(), stranger.arguments())
    node.cluster_port = free_port()
    start_members(node)
    return node


def cluster_view(cluster: Cluster) -> list[tuple[str, dict[str, str]]]:
    views = []
    for node in cluster.running():
        document = node.request("GET", "/cluster").json()
        views.append((document["clusterId"], document["members"]))
    return views


@pytest.mark.parametrize("kind", STRANGERS)
def test_stranger_cannot_be_added_or_add_a_member(
    tmp_path: Path, cluster_pki: ClusterPki, started: list[Any], kind: str
) -> None:
    cluster = tls_cluster(tmp_path, cluster_pki, 2)
    started.append(cluster)
    start_members(*cluster.nodes)
    cluster.form()
    stranger = start_stranger(tmp_path, cluster_pki.strangers[kind])
    started.append(stranger)
    before = cluster_view(cluster)
    assert len(before[0][1]) == 2

    # Added through the leader, or through a follower (forwarded to the leader): 400.
    for node in (cluster.leader(), *cluster.followers()):
        answer = node.form("POST", "/cluster/members", {"address": stranger.address})
        assert answer.status == 400, (answer.status, answer.body)
    assert stranger.state() == "Standalone"
    assert stranger.request("GET", "/cluster").json()["members"] == {}
    assert cluster_view(cluster) == before

    # The stranger makes its own cluster (no dialing: its own address) but cannot
    # capture a member of ours into it.
    answer = stranger.form("POST", "/cluster/members", {"address": stranger.address})
    assert answer.status == 200, answer.body
    for node in cluster.nodes:
        answer = stranger.form("POST", "/cluster/members", {"address": node.address})
        assert answer.status == 400, (answer.status, answer.body)
    assert len(stranger.request("GET", "/cluster/members").json()) == 1
    assert cluster_view(cluster) == before

    # The cluster still works.
    assert cluster.followers()[0].post_change({"data": "still fine"}).status == 200
    wait_identical(cluster.lists, ["still fine"])


def test_expired_member_certificate_cannot_join(
    tmp_path: Path, cluster_pki: ClusterPki, started: list[Any]
) -> None:
    """The same as above for the expired certificate, and the control: a node with
    a valid certificate from the same CA joins the same cluster."""
    cluster = tls_cluster(tmp_path, cluster_pki, 3)
    started.append(cluster)
    newcomer = cluster.nodes.pop()  # started, but added only after the stranger
    started.append(newcomer)
    start_members(*cluster.nodes)
    cluster.form()
    start_members(newcomer)
    stranger = start_stranger(tmp_path, cluster_pki.strangers["expired"])
    started.append(stranger)

    answer = cluster.leader().form("POST", "/cluster/members", {"address": stranger.address})
    assert answer.status == 400, (answer.status, answer.body)
    answer = cluster.leader().form("POST", "/cluster/members", {"address": newcomer.address})
    assert answer.status == 200, (answer.status, answer.body)
    cluster.nodes.append(newcomer)
    cluster.wait_converged()
    assert len(cluster.nodes[0].request("GET", "/cluster/members").json()) == 3
    assert stranger.state() == "Standalone"


# 2. Strangers cannot talk to the cluster port -----------------------------------------


def refused(port: int, context: ssl.SSLContext | None) -> bool:
    """Whether the member ends a connection from `context` (None: plain TCP) before
    anything is exchanged. A member waiting for our HELLO (a read timing out) is
    the opposite: the connection was accepted."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as raw:
        if context is None:
            # A well-formed frame header and garbage body, in the clear.
            raw.sendall(struct.pack(">I", 16) + b"\x00" * 16)
            raw.settimeout(2)
            try:
                reply = raw.recv(4096)
            except TimeoutError:
                return False
            except OSError:
                return True
            # End of stream, or at most a TLS alert record (content type 21).
            return reply == b"" or reply[:1] == b"\x15"
        try:
            wrapped = context.wrap_socket(raw, server_hostname=LOOPBACK)
        except ssl.SSLError:
            return True
        except OSError:
            return True
        with wrapped:
            # TLS 1.3: the server judges our certificate after our side of the
            # handshake is done, so its refusal shows on the first read.
            wrapped.settimeout(2)
            try:
                return wrapped.recv(4096) == b""
            except TimeoutError:
                return False
            except OSError:
                return True


def dialer_context(certificate: Issued | None, ca_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(ca_file))
    context.check_hostname = False
    if certificate is not None:
        context.load_cert_chain(str(certificate.cert), str(certificate.key))
    return context


def test_cluster_port_refuses_strangers(
    tmp_path: Path, cluster_pki: ClusterPki, started: list[Any]
) -> None:
    cluster = tls_cluster(tmp_path, cluster_pki, 2)
    started.append(cluster)
    start_members(*cluster.nodes)
    cluster.form()
    cluster.wait_converged()
    leader = cluster.leader()
    assert leader.cluster_port is not None
    port = leader.cluster_port
    before = leader.raft()
    ca_file = cluster_pki.ca.cert_file

    # Control: a member's certificate gets through TLS and the member waits for HELLO.
    assert not refused(port, dialer_context(cluster_pki.member("control"), ca_file))
    for kind, stranger in cluster_pki.strangers.items():
        # The stranger's own client context (it trusts its own CA only) ...
        own = dialer_context(stranger.certificate, stranger.ca_file)
        assert refused(port, own), kind
        # ... and one that trusts the member, so the refusal measured is the member's.
        trusting = dialer_context(stranger.certificate, ca_file)
        assert refused(port, trusting), kind
    assert refused(port, dialer_context(None, ca_file)), "TLS without a client certificate"
    assert refused(port, None), "plain TCP"

    after = leader.raft()
    assert (after["term"], after["leader"], after["clusterId"]) == (
        before["term"],
        before["leader"],
        before["clusterId"],
    )
    assert leader.state() == "Leader"


# 4. ChangeAgent's combined command line -----------------------------------------------


@dataclass
class SecureMember:
    node: Node
    cluster_port: int
    tls: ssl.SSLContext

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.cluster_port}"

    def call(
        self, method: str, path: str, body: bytes | str | None = None, **headers: str
    ) -> Response:
        return self.node.request(method, path, body, headers, tls=self.tls)

    def state(self) -> str:
        return self.call("GET", "/diagnostics/raft/state").text

    def changes(self) -> list[dict[str, Any]]:
        answer = self.call("GET", "/changes?limit=10000")
        assert answer.status == 200, answer.body
        changes: list[dict[str, Any]] = answer.json()["changes"]
        return changes


def api_client(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    context.load_cert_chain(str(pki.client.cert), str(pki.client.key))
    return context


def test_combined_command_line_end_to_end(
    tmp_path: Path, pki: Pki, cluster_pki: ClusterPki, started: list[Any]
) -> None:
    members = []
    for number in range(3):
        issued = cluster_pki.member(f"combined{number}")
        secure_port, cluster_port = free_port(), free_port()
        # As in ChangeAgent's README, flag for flag (-sp without -p: HTTPS only).
        arguments = ["-sp", str(secure_port), "-cp", str(cluster_port)]
        arguments += ["-cert", str(pki.server.cert), "-key", str(pki.server.key)]
        arguments += ["-cas", str(pki.ca.cert_file)]
        arguments += ["-ckey", str(issued.key), "-ccert", str(issued.cert)]
        arguments += ["-cca", str(cluster_pki.ca.cert_file)]
        node = Node(tmp_path / f"combined{number}", arguments, expect=("https",))
        started.append(node)
        node.start()
        assert node.ports == {"https": secure_port}
        wait_cluster_port(node.log_text, cluster_port)
        members.append(SecureMember(node, cluster_port, api_client(pki)))

    first = members[0]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for member in members:
        body = urlencode({"address": member.address})
        answer = first.node.request("POST", "/cluster/members", body, form, tls=first.tls)
        assert answer.status == 200, (answer.status, answer.body)
    assert len(first.call("GET", "/cluster/members").json()) == 3
    # The API still wants a client certificate on every node.
    with pytest.raises(OSError):
        members[1].node.request(
            "GET", "/changes", tls=ssl.create_default_context(cafile=str(pki.ca.cert_file))
        )

    def leader() -> SecureMember | None:
        return next((member for member in members if member.state() == "Leader"), None)

    found: SecureMember = wait_until(leader, CONVERGE_TIMEOUT_S, 0.05)
    expected = []
    for member in members:
        document = orjson.dumps({"data": f"written on {member.address}"})
        answer = member.call("POST", "/changes", document, **{"Content-Type": "application/json"})
        assert answer.status == 200, (member is found, answer.body)
        expected.append(f"written on {member.address}")
    lists = wait_identical(lambda: [member.changes() for member in members], expected)
    assert all(changes == lists[0] for changes in lists)
