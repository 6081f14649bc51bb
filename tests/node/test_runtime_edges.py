"""Smaller runtime edges found in review: read-index contexts unique across the
cores a node runs, no link recreated to a removed member, no empty body when a
purge races an idempotent retry, and the transport's age limit for queued Raft
messages following the replicated election timeout."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson

from changeagent.change import parse_change_body
from changeagent.config import SECOND_NS
from changeagent.node.node import Node
from changeagent.node.replicated_state import AddressChanged, MemberRemoved
from changeagent.raft import Message, MessageType
from tests.support.node import run_with_node


class RecordingTransport:
    """Stands in for the peer transport: records what the node sends and frees."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.removed: list[int] = []
        self.message_ages_max_s: list[float] = []

    def send(self, peer_id: int, message: Message) -> None:
        self.sent.append(peer_id)

    def remove_peer(self, peer_id: int) -> None:
        self.removed.append(peer_id)

    def address_changed(self, peer_id: int) -> None:
        pass

    def set_message_age_max(self, seconds: float) -> None:
        self.message_ages_max_s.append(seconds)


def test_read_contexts_differ_between_the_cores_a_node_runs(tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        first = node.replica.core_driver._read_epoch
        # As a join does:
        await node.replica.restart_driver(applied=node.storage.hard_state().commit)
        assert node.replica.core_driver._read_epoch != first

    run_with_node(tmp_path, body)


def test_no_message_recreates_the_link_of_a_removed_member(tmp_path: Path) -> None:
    async def body(node: Node) -> None:
        transport = RecordingTransport()
        node.attach_transport(transport)  # type: ignore[arg-type]
        answer = Message(MessageType.PRE_VOTE_RESPONSE, node.node_id, 5, node.status().term)
        await node.replica._execute([MemberRemoved(5)])
        node.replica._send(answer)
        assert transport.sent == [] and set(transport.removed) == {5}
        await node.replica._execute([AddressChanged(5, "127.0.0.1:9")])  # added again
        node.replica._send(answer)
        assert transport.sent == [5]

    run_with_node(tmp_path, body)


def test_a_retry_whose_change_was_just_purged_gets_its_id_not_an_empty_body(
    tmp_path: Path,
) -> None:
    async def body(node: Node) -> None:
        stored = orjson.loads(await node.append_change(parse_change_body(b'{"data":1}'), "k"))
        node.storage.get_change = lambda *arguments: None  # type: ignore[method-assign]
        again = await node.append_change(parse_change_body(b'{"data":1}'), "k")
        assert orjson.loads(again) == {"_id": stored["_id"]}

    run_with_node(tmp_path, body)


def test_queued_raft_messages_expire_after_the_replicated_election_timeout(
    tmp_path: Path,
) -> None:
    async def body(node: Node) -> None:
        transport = RecordingTransport()
        node.attach_transport(transport)  # type: ignore[arg-type]
        assert transport.message_ages_max_s == [1.0]  # the default election timeout
        settings = node.settings
        await node.update_settings(replace(settings, election_timeout_ns=3 * SECOND_NS))
        assert transport.message_ages_max_s == [1.0, 3.0]
        await node.update_settings(replace(node.settings, min_purge_records=5))
        assert transport.message_ages_max_s == [1.0, 3.0], "no timeout changed"
        await node.replica.restart_driver(applied=node.storage.hard_state().commit)
        assert transport.message_ages_max_s == [1.0, 3.0, 3.0]  # a join or leave's restart

    run_with_node(tmp_path, body)
