"""Core support for the node layer: live timeout changes and the RESET membership
entry a removed node writes into its own log to become a one-member cluster."""

from __future__ import annotations

import random

import pytest

from changeagent.raft import (
    ENTRY_TYPE_MEMBERSHIP,
    ConfChange,
    ConfChangeKind,
    ConfigError,
    Entry,
    HardState,
    Membership,
    Message,
    MessageType,
    RaftNode,
    Role,
)
from changeagent.raft.interfaces import Snapshot
from changeagent.raft.memory_log import MemoryLog

from .harness import default_config, drain, make_node


def test_set_timeouts_validates_and_restarts_the_timers() -> None:
    node, _log = make_node(1, voters=(1, 2, 3))
    with pytest.raises(ConfigError):
        node.set_timeouts(2, 2)
    node.set_timeouts(50, 5)
    assert (node.config.election_ticks, node.config.heartbeat_ticks) == (50, 5)
    for _ in range(49):
        node.tick()
    assert node.role is Role.FOLLOWER  # the new, longer timeout applies


def test_a_reset_entry_makes_a_one_member_cluster_of_its_node() -> None:
    reset = ConfChange(ConfChangeKind.RESET, 2)
    assert ConfChange.decode(reset.encode()) == reset
    three = Membership(frozenset({1, 2, 3}))
    assert reset.check(three) is not None  # never proposed
    assert reset.apply(three) == Membership(frozenset({2}))
    log = MemoryLog(
        Snapshot(0, 0, Membership(frozenset({1, 2, 3}))),
        [
            Entry(1, 1, -1, b""),
            Entry(2, 1, ENTRY_TYPE_MEMBERSHIP, ConfChange(ConfChangeKind.REMOVE, 2).encode()),
            Entry(3, 2, ENTRY_TYPE_MEMBERSHIP, reset.encode()),
        ],
    )
    node = RaftNode(default_config(2), log, HardState(2, 2, 3), random.Random(0), applied=3)
    assert node.membership == Membership(frozenset({2}))
    node.campaign()
    drain(node, log)
    assert node.role is Role.LEADER


def test_a_reset_cannot_be_proposed() -> None:
    node, log = make_node(1, voters=(1,))
    node.campaign()
    drain(node, log)
    drain(node, log)
    with pytest.raises(Exception, match="never proposed"):
        node.propose_membership(ConfChange(ConfChangeKind.RESET, 1))


def test_messages_taken_during_a_write_leave_the_next_ready() -> None:
    """`take_messages` while a Ready is outstanding gives the heartbeats the ticks
    made meanwhile, once; the next Ready does not carry them again."""
    node, log = make_node(1, voters=(1, 2, 3))
    node.campaign()
    drain(node, log)
    node.step(Message(MessageType.VOTE_RESPONSE, 2, 1, node.term))
    drain(node, log)
    assert node.role is Role.LEADER
    node.propose([(0, b"{}", "")])
    outstanding = node.ready()  # its write is in flight
    assert outstanding.entries
    for _ in range(node.config.heartbeat_ticks):
        node.tick()
    taken = node.take_messages()
    assert sorted((m.type, m.target) for m in taken) == [
        (MessageType.HEARTBEAT, 2),
        (MessageType.HEARTBEAT, 3),
    ]
    assert node.take_messages() == ()
    node.advance(outstanding)
    later = node.ready()
    assert not any(m.type is MessageType.HEARTBEAT for m in later.messages)
