"""Mutual TLS on the cluster port: members with certificates from the cluster CA
talk; a node with a certificate from another CA, or with none, cannot connect."""

from __future__ import annotations

import ssl

import pytest

from changeagent.transport import PeerUnavailable
from changeagent.transport.tls import client_context, server_context
from tests.transport.certs import Identity, make_ca, make_node
from tests.transport.harness import Node, message, run, started, stop_all, wait_until


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Identity]:
    directory = tmp_path_factory.mktemp("pki")
    cluster_ca, rogue_ca = make_ca(directory, "cluster-ca"), make_ca(directory, "rogue-ca")
    return {
        "one": make_node(directory, "one", cluster_ca),
        "two": make_node(directory, "two", cluster_ca),
        "rogue": make_node(directory, "rogue", rogue_ca),
    }


def tls_node(node_id: int, carrier: str, addresses: dict[int, str], who: Identity) -> Node:
    return Node(
        node_id,
        carrier,
        addresses,
        server_tls=server_context(who.cert, who.key, who.ca),
        client_tls=client_context(who.cert, who.key, who.ca),
    )


@pytest.mark.parametrize("carrier", ["tcp", "ws"])
def test_members_talk_over_mutual_tls(carrier: str, pki: dict[str, Identity]) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(
            tls_node(1, carrier, addresses, pki["one"]), tls_node(2, carrier, addresses, pki["two"])
        )
        try:
            a.transport.send(2, message(1, 2, index=3))
            assert await b.next_message() == (1, message(1, 2, index=3))
            b.transport.send(1, message(2, 1, index=4))
            assert await a.next_message() == (2, message(2, 1, index=4))
            assert await a.transport.propose(2, 0, b"abc") == 3
        finally:
            await stop_all([a, b])

    run(scenario())


def test_a_certificate_from_another_ca_or_none_is_refused(pki: dict[str, Identity]) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        member = await tls_node(2, "tcp", addresses, pki["two"]).start()
        rogue = pki["rogue"]
        # The rogue trusts the cluster CA (it wants in) but its own certificate is
        # signed by another CA; it even knows the cluster secret.
        intruder = Node(
            3,
            "tcp",
            addresses,
            client_tls=client_context(rogue.cert, rogue.key, pki["two"].ca),
        )
        await intruder.start()
        anonymous_tls = ssl.create_default_context(cafile=pki["two"].ca)
        anonymous_tls.check_hostname = False
        anonymous = Node(4, "tcp", addresses, client_tls=anonymous_tls)
        await anonymous.start()
        try:
            for stranger in (intruder, anonymous):
                with pytest.raises(PeerUnavailable):
                    await stranger.transport.call_address(addresses[2], "describe", timeout_s=5)
                stranger.transport.send(2, message(stranger.node_id, 2))
                transport = stranger.transport
                await wait_until(lambda t=transport: t.stats().peers[2].last_error != "")  # type: ignore[misc]
                assert not transport.stats().peers[2].connected
            assert member.received.empty()
            assert member.transport.stats().connections == 0
        finally:
            await stop_all([member, intruder, anonymous])

    run(scenario())


def test_a_member_refuses_a_server_certificate_from_another_ca(pki: dict[str, Identity]) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        rogue = pki["rogue"]
        fake = Node(
            2,
            "tcp",
            addresses,
            server_tls=server_context(rogue.cert, rogue.key, pki["one"].ca),
        )
        member = tls_node(1, "tcp", addresses, pki["one"])
        await started(fake, member)
        try:
            with pytest.raises(PeerUnavailable):
                await member.transport.call_address(addresses[2], "describe", timeout_s=5)
            assert fake.requests == []
        finally:
            await stop_all([fake, member])

    run(scenario())
