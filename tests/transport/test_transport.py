"""Two or three Transports in one process over real loopback sockets, both carriers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from changeagent.transport import (
    ERROR_TIMEOUT,
    Proposal,
    ProposalReply,
    RequestContext,
    RequestFailed,
    TransportConfig,
)
from changeagent.transport.transport import Reply, Request
from tests.transport.harness import Node, message, run, started, stop_all, wait_until

CARRIERS = ["tcp", "ws"]


@pytest.mark.parametrize("carrier", CARRIERS)
def test_messages_flow_both_ways_over_one_connection(carrier: str) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, carrier, addresses), Node(2, carrier, addresses))
        try:
            # Both send at once: both dial, and the pair settles on one connection.
            a.transport.send(2, message(1, 2, index=11))
            b.transport.send(1, message(2, 1, index=22))
            assert await b.next_message() == (1, message(1, 2, index=11))
            assert await a.next_message() == (2, message(2, 1, index=22))
            for index in range(100):
                a.transport.send(2, message(1, 2, index=index))
            for index in range(100):
                assert (await b.next_message())[1].index == index
            await wait_until(
                lambda: a.transport.stats().connections == 1 == b.transport.stats().connections,
                what="a single connection per pair",
            )
            stats = a.transport.stats().peers[2]
            assert stats.connected
            assert stats.messages_sent == 101
            assert stats.messages_received == 1
            assert stats.messages_dropped == 0
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("carrier", CARRIERS)
def test_requests_are_answered_on_the_link(carrier: str) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, carrier, addresses), Node(2, carrier, addresses))
        try:
            assert await a.transport.propose(2, 0, b"12345", key="k") == 5
            assert await b.transport.read_index(1) == 100
            assert await a.transport.call(2, "describe", {"x": [1, b"2"]}) == {
                "node": 2,
                "echo": {"x": [1, b"2"]},
            }
            context, _ = b.requests[0]
            assert (context.peer_id, context.member) == (1, True)
            with pytest.raises(RequestFailed) as refused:
                await a.transport.propose(2, 0, b"x", key="refuse")
            assert (refused.value.code, refused.value.message) == ("not_leader", "ask someone else")
            with pytest.raises(RequestFailed) as failed:
                await a.transport.call(2, "fail")
            assert failed.value.code == "internal"
            # Many concurrent requests, answered out of order, each to its caller.
            indexes = await asyncio.gather(
                *(a.transport.propose(2, 0, b"x" * n) for n in range(50))
            )
            assert indexes == list(range(50))
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_request_answered_early_gets_that_answer_once(carrier: str) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        answered = asyncio.Event()  # set by the test once the caller has the answer

        async def early(context: RequestContext, request: Request) -> Reply:
            assert context.reply_now(ProposalReply(0, index=7))
            assert context.reply_now(ProposalReply(0, index=8))  # already sent: nothing
            await answered.wait()  # the caller is answered although this has not returned
            return ProposalReply(0, index=9)  # not sent

        a, b = await started(
            Node(1, carrier, addresses), Node(2, carrier, addresses, on_request=early)
        )
        try:
            assert await a.transport.propose(2, 0, b"x") == 7
            answered.set()
            assert await a.transport.propose(2, 0, b"y") == 7  # its own early answer
            # A handler that answered the usual way: a later early answer is dropped.
            b.on_request = b.echo
            assert await a.transport.propose(2, 0, b"zzz") == 3
            context, _ = b.requests[-1]  # its reply went out before `a` had it: closed
            assert not context.reply_now(ProposalReply(0, index=99))
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("carrier", CARRIERS)
def test_an_early_answer_carries_a_raft_message_along(carrier: str) -> None:
    """The commit notice a forwarded write's answer needs goes in the same write on
    the link; by the time the caller has its answer, the message was delivered."""

    async def scenario() -> None:
        addresses: dict[int, str] = {}

        async def early(context: RequestContext, request: Request) -> Reply:
            assert context.reply_now(ProposalReply(0, index=7), message(2, 1, index=70))
            return ProposalReply(0, index=9)  # not sent

        a, b = await started(
            Node(1, carrier, addresses), Node(2, carrier, addresses, on_request=early)
        )
        try:
            assert await a.transport.propose(2, 0, b"x") == 7
            assert a.received.get_nowait() == (2, message(2, 1, index=70))
            assert b.transport.stats().peers[1].messages_sent >= 1
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_proposal_is_handled_in_the_read_that_brings_it_other_requests_in_a_task(
    carrier: str,
) -> None:
    """A Proposal's handler runs up to its first await in the call that reads its
    frame (a forwarded write is proposed a loop iteration sooner); the rest runs in
    a task the transport cancels when it closes. Read indexes and RPCs get a task
    of their own from the start (their handlers may enter `asyncio.timeout`)."""

    async def scenario() -> None:
        addresses: dict[int, str] = {}
        started_in: list[tuple[str, asyncio.Task[Any] | None]] = []
        cancelled: list[str] = []

        async def handler(context: RequestContext, request: Request) -> Reply:
            started_in.append((type(request).__name__, asyncio.current_task()))
            if isinstance(request, Proposal) and request.key == "hang":
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.append(request.key)
                    raise
            await asyncio.sleep(0)  # the rest after a suspension: in a task
            return await b.echo(context, request)

        a, b = await started(
            Node(1, carrier, addresses), Node(2, carrier, addresses, on_request=handler)
        )
        try:
            # The link is served first: frames that come before the connection is
            # handed to its reader wait for it and are dispatched from its task.
            assert await a.transport.read_index(2) == 200
            assert (await a.transport.call(2, "describe", 1))["node"] == 2
            assert await a.transport.propose(2, 0, b"four") == 4
            kinds = [kind for kind, _ in started_in]
            assert kinds == ["ReadIndexRequest", "RpcRequest", "Proposal"]
            assert all(task is not None for _, task in started_in[:2])
            # Protocol callbacks run outside any task: the frame's read itself.
            assert started_in[2][1] is None
            hanging = asyncio.ensure_future(a.transport.propose(2, 0, b"x", key="hang"))
            await wait_until(lambda: len(started_in) == 4, what="the hanging proposal")
            assert started_in[3] == ("Proposal", None)
        finally:
            await stop_all([a, b])
        assert cancelled == ["hang"]  # its task was the transport's: cancelled at close
        with pytest.raises(RequestFailed):
            await hanging

    run(scenario())


@pytest.mark.parametrize("carrier", CARRIERS)
def test_a_proposals_index_is_handed_over_as_its_reply_is_read(carrier: str) -> None:
    """`propose(on_index=...)` runs when the reply is read: before the message sent
    along behind it is delivered and before the caller resumes; not for a refusal."""

    async def scenario() -> None:
        addresses: dict[int, str] = {}

        async def early(context: RequestContext, request: Request) -> Reply:
            if request.key == "refuse":
                return ProposalReply(0, error_code="not_leader", error_message="no")
            assert context.reply_now(ProposalReply(0, index=7), message(2, 1, index=70))
            return ProposalReply(0, index=9)  # not sent

        a, b = await started(
            Node(1, carrier, addresses), Node(2, carrier, addresses, on_request=early)
        )
        seen: list[tuple[int, int, bool]] = []

        def on_index(index: int) -> None:
            seen.append((index, a.received.qsize(), proposal.done()))

        try:
            proposal = asyncio.ensure_future(a.transport.propose(2, 0, b"x", on_index=on_index))
            await wait_until(lambda: bool(seen), what="the index hook")
            # Neither the message behind the reply nor the caller has been served yet.
            assert seen == [(7, 0, False)]
            assert await proposal == 7
            assert a.received.get_nowait() == (2, message(2, 1, index=70))
            with pytest.raises(RequestFailed):
                await a.transport.propose(2, 0, b"y", key="refuse", on_index=on_index)
            assert seen == [(7, 0, False)]
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("carrier", CARRIERS)
def test_reconnects_after_the_peer_restarts(carrier: str) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b = await started(Node(1, carrier, addresses), Node(2, carrier, addresses))
        try:
            a.transport.send(2, message(1, 2, index=1))
            await b.next_message()
            await b.stop()
            await wait_until(lambda: not a.transport.stats().peers[2].connected, what="loss")
            b = Node(2, carrier, addresses)
            await b.start(port=int(addresses[2].rsplit(":", 1)[1]))
            # Messages written just before the loss may be gone (Raft resends); keep
            # sending until one arrives.
            index = 100
            while b.received.empty():
                a.transport.send(2, message(1, 2, index=index))
                index += 1
                await asyncio.sleep(0.02)
            stats = a.transport.stats().peers[2]
            assert stats.connected and stats.reconnects >= 1
            assert await b.transport.read_index(1) == 100
        finally:
            await stop_all([a, b])

    run(scenario())


def test_full_queue_drops_the_oldest_raft_messages_and_counts_them() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        config = TransportConfig(queue_messages_max=4, backoff_s_min=0.01, backoff_s_max=0.05)
        a = await Node(1, "tcp", addresses, config=config).start()
        b = await Node(2, "tcp", addresses).start()
        address_of_b = addresses.pop(2)  # a cannot reach b yet: its queue fills
        try:
            for index in range(10):
                a.transport.send(2, message(1, 2, index=index))
            stats = a.transport.stats().peers[2]
            assert (stats.queue_messages, stats.messages_dropped) == (4, 6)
            addresses[2] = address_of_b
            a.transport.address_changed(2)
            received = [(await b.next_message())[1].index for _ in range(4)]
            assert received == [6, 7, 8, 9]
            assert b.received.empty()
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("limit_by", ["config", "setter"])
def test_raft_messages_that_waited_too_long_for_a_connection_are_dropped_not_sent_late(
    limit_by: str,
) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        age_max_s = 0.2
        config = TransportConfig(
            message_age_max_s=age_max_s if limit_by == "config" else 60.0,
            backoff_s_min=0.01,
            backoff_s_max=0.05,
        )
        a = await Node(1, "tcp", addresses, config=config).start()
        b = await Node(2, "tcp", addresses).start()
        if limit_by == "setter":  # as a node does with its replicated election timeout
            a.transport.set_message_age_max(age_max_s)
        address_of_b = addresses.pop(2)  # a cannot reach b yet: its messages wait
        try:
            sent_s = time.monotonic()  # the transport's clock
            for index in range(3):
                a.transport.send(2, message(1, 2, index=index))
            # A request waits as long and still goes: its caller decides (timeout).
            request = asyncio.create_task(a.transport.propose(2, 0, b"12345", timeout_s=30))
            await wait_until(lambda: a.transport.stats().peers[2].queue_messages == 4)
            await wait_until(lambda: time.monotonic() > sent_s + age_max_s, what="the age limit")
            a.transport.send(2, message(1, 2, index=99))  # fresh
            addresses[2] = address_of_b
            a.transport.address_changed(2)
            assert await request == 5
            assert (await b.next_message())[1].index == 99
            stats = a.transport.stats().peers[2]
            assert (stats.messages_dropped, stats.messages_sent) == (3, 1)
            assert b.received.empty()
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan")])
def test_the_age_limit_of_queued_messages_must_be_positive(seconds: float) -> None:
    async def scenario() -> None:
        a = await Node(1, "tcp", {}).start()
        try:
            with pytest.raises(ValueError, match="must be positive"):
                a.transport.set_message_age_max(seconds)
        finally:
            await a.stop()

    run(scenario())


def test_requests_are_never_dropped_for_room_but_refused_when_full() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        config = TransportConfig(queue_messages_max=2)
        a = await Node(1, "tcp", addresses, config=config).start()
        try:
            a.transport.send(2, message(1, 2))
            first = asyncio.create_task(a.transport.propose(2, 0, b"1", timeout_s=0.3))
            second = asyncio.create_task(a.transport.propose(2, 0, b"2", timeout_s=0.3))
            await wait_until(lambda: a.transport.stats().peers[2].queue_messages == 2)
            assert a.transport.stats().peers[2].messages_dropped == 1  # the Raft message
            with pytest.raises(RequestFailed, match="queue_full"):
                await a.transport.propose(2, 0, b"3")
            a.transport.send(2, message(1, 2))  # no room and nothing droppable: dropped
            assert a.transport.stats().peers[2].messages_dropped == 2
            for task in (first, second):
                with pytest.raises(RequestFailed) as failure:
                    await task
                assert failure.value.code == ERROR_TIMEOUT
            assert a.transport.stats().peers[2].requests_failed == 3
        finally:
            await a.stop()

    run(scenario())


def test_requests_in_flight_fail_when_the_connection_is_lost() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        answered = asyncio.Event()

        async def never(context: object, request: object) -> object:
            answered.set()
            await asyncio.Event().wait()
            raise AssertionError

        a = await Node(1, "tcp", addresses).start()
        b = await Node(2, "tcp", addresses, on_request=never).start()  # type: ignore[arg-type]
        try:
            waiting = asyncio.create_task(a.transport.propose(2, 0, b"x", timeout_s=20))
            await asyncio.wait_for(answered.wait(), 10)
            await b.stop()
            with pytest.raises(RequestFailed, match="disconnected"):
                await waiting
        finally:
            await stop_all([a, b])

    run(scenario())


@pytest.mark.parametrize("carrier", CARRIERS)
@pytest.mark.parametrize(
    ("cluster_id", "secret", "reason"),
    [(7, b"another secret", "failed to prove"), (8, b"cluster secret", "belongs to cluster 8")],
)
def test_wrong_secret_or_cluster_is_refused_and_logged(
    carrier: str, cluster_id: int, secret: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        a, b, c = await started(
            Node(1, carrier, addresses, cluster_id=cluster_id, secret=secret),
            Node(2, carrier, addresses),
            Node(3, carrier, addresses),
        )
        try:
            a.transport.send(2, message(1, 2))
            await wait_until(lambda: b.transport.stats().handshake_failures >= 1)
            await wait_until(lambda: a.transport.stats().peers[2].last_error != "")
            assert not a.transport.stats().peers[2].connected
            assert b.received.empty()
            # b keeps serving its real peers.
            c.transport.send(2, message(3, 2))
            assert await b.next_message() == (3, message(3, 2))
        finally:
            await stop_all([a, b, c])

    with caplog.at_level(logging.WARNING, logger="changeagent.transport"):
        run(scenario())
    assert any(reason in record.getMessage() for record in caplog.records)


def test_a_standalone_node_joins_through_an_rpc_carrying_the_secret() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        joiner: list[Node] = []

        async def standalone(context: object, request: object) -> object:
            from changeagent.transport import RequestContext, RpcRequest, RpcResponse

            assert isinstance(context, RequestContext) and isinstance(request, RpcRequest)
            if request.method == "join" and not context.member:
                payload = request.payload
                assert isinstance(payload, dict)
                cluster_id, secret = payload["cluster_id"], payload["secret"]
                assert isinstance(cluster_id, int) and isinstance(secret, bytes)
                joiner[0].transport.set_cluster(cluster_id, secret)
                return RpcResponse(0, payload="joined")
            return RpcResponse(0, payload={"node": 2, "cluster": joiner[0].transport.cluster_id})

        leader = await Node(1, "tcp", addresses).start()
        node = Node(2, "tcp", addresses, cluster_id=0, secret=b"", on_request=standalone)  # type: ignore[arg-type]
        joiner.append(node)
        await node.start()
        stranger = await Node(3, "tcp", addresses, cluster_id=0, secret=b"").start()
        try:
            # A link to a standalone node never carries Raft messages.
            leader.transport.send(2, message(1, 2))
            await wait_until(
                lambda: "in no cluster" in leader.transport.stats().peers[2].last_error
            )
            answer = await leader.transport.call_address(addresses[2], "describe")
            assert answer == (2, 0, {"node": 2, "cluster": 0})
            answer = await leader.transport.call_address(
                addresses[2], "join", {"cluster_id": 7, "secret": b"cluster secret"}
            )
            assert answer == (2, 0, "joined")
            leader.transport.address_changed(2)
            leader.transport.send(2, message(1, 2, index=5))
            while True:  # messages queued before the join were dropped or refused
                peer, received = await node.next_message()
                if received.index == 5:
                    break
            assert peer == 1
            # A stranger outside the cluster cannot even call a member.
            from changeagent.transport import PeerUnavailable

            with pytest.raises(PeerUnavailable):
                await stranger.transport.call_address(addresses[1], "describe", timeout_s=5)
            assert await leader.transport.call_address(addresses[2], "describe") == (
                2,
                7,
                {"node": 2, "cluster": 7},
            )
        finally:
            await stop_all([leader, node, stranger])

    run(scenario())


def test_giving_up_fails_the_requests_to_one_peer_and_drops_their_late_answers() -> None:
    async def scenario() -> None:
        addresses: dict[int, str] = {}
        release = asyncio.Event()
        asked: list[int] = []

        async def held(context: RequestContext, request: Request) -> Reply:
            asked.append(context.peer_id)
            await release.wait()
            return ProposalReply(request.request_id, index=9)

        a = await Node(1, "tcp", addresses).start()
        b = await Node(2, "tcp", addresses, on_request=held).start()
        c = await Node(3, "tcp", addresses, on_request=held).start()
        try:
            to_b = [
                asyncio.create_task(a.transport.propose(2, 0, b"x", timeout_s=20)) for _ in "xy"
            ]
            to_c = asyncio.create_task(a.transport.propose(3, 0, b"x", timeout_s=20))
            await wait_until(lambda: len(asked) == 3)
            a.transport.give_up_requests(2, "gone", "node 2 stopped leading")
            for task in to_b:
                with pytest.raises(RequestFailed) as failed:
                    await asyncio.wait_for(task, 5)
                assert failed.value.code == "gone"
                assert failed.value.message == "node 2 stopped leading"
            assert not to_c.done()
            release.set()
            assert await asyncio.wait_for(to_c, 5) == 9
            # Node 2's late answers are dropped; the link still works.
            assert await a.transport.propose(2, 0, b"x", timeout_s=5) == 9
        finally:
            await stop_all([a, b, c])

    run(scenario())
