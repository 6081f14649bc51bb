"""Node and cluster ids in the transport's log lines and errors are base 36, as
everywhere in the API (ids 1 and 2 look the same in both bases, so these use larger ones)."""

from __future__ import annotations

import logging

import pytest

from changeagent.ids import format_id
from changeagent.transport import HandshakeError
from changeagent.transport.auth import Credentials, dial_handshake
from changeagent.transport.tcplink import TcpDialer
from tests.transport.harness import SECRET, Node, run, stop_all

STRANGER_ID = 36**3 + 1000  # "1rs" in base 36
OTHER_CLUSTER = 36**5 + 7


def test_a_node_of_another_cluster_is_named_in_base_36(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        node = await Node(2, "tcp", {}).start()
        try:
            stream = await TcpDialer().connect(f"127.0.0.1:{node.port}", 1 << 20)
            credentials = Credentials(STRANGER_ID, OTHER_CLUSTER, SECRET)
            with pytest.raises((HandshakeError, ConnectionError)):
                await dial_handshake(stream, credentials, 5.0, link=True)
            await stream.close()
        finally:
            await stop_all([node])

    with caplog.at_level(logging.WARNING, logger="changeagent.transport"):
        run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    expected = f"node {format_id(STRANGER_ID)} belongs to cluster {format_id(OTHER_CLUSTER)}"
    assert any(expected in line for line in refusals), refusals
