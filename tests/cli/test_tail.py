"""`changeagent tail`: to the end, following across kill -9 of the member read,
stopped by SIGTERM with a checkpoint that resumes exactly, purge gaps, pipes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from changeagent.client import Client, RetryPolicy
from tests.cli.support import RunningCli, checkpoint_id, cli_environment, one_error_line, run_cli
from tests.support.cluster import Cluster
from tests.support.server import ServerProcess, wait_until


def ids(lines: list[str]) -> list[int]:
    return [orjson.loads(line)["_id"] for line in lines]


def test_tail_prints_to_the_end_and_exits(url: str) -> None:
    tag = uuid.uuid4().hex
    with Client(url) as client:
        posted = [client.post(n, tags=[tag]) for n in range(3)]
        other = client.post("other")
    result = run_cli("tail", "--tag", tag, servers=url)
    assert result.returncode == 0, result.stderr
    assert ids(result.stdout.splitlines()) == [change.id for change in posted]
    after = run_cli("tail", "--since", str(posted[0].id), servers=url)
    assert ids(after.stdout.splitlines())[-1] == other.id
    assert run_cli("tail", "--from-end", "--tag", tag, servers=url).stdout == ""


def test_tail_into_a_closed_pipe_stops_quietly(url: str) -> None:
    with Client(url) as client:
        for n in range(3):
            client.post(n)
    command = f"{sys.executable} -m changeagent tail --server {url} | head -n 1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_environment(),
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert len(result.stdout.splitlines()) == 1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path, 3, ["--commit-timeout", "5"])
    try:
        yield nodes.start().form()
    finally:
        nodes.kill()


def test_tail_follows_across_kill_of_the_member_read_and_resumes(
    cluster: Cluster, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex
    read_first = cluster.followers()[0]
    order = [read_first, *(node for node in cluster.nodes if node is not read_first)]
    urls = [f"http://127.0.0.1:{node.port}" for node in order]
    checkpoint = tmp_path / "position"
    arguments = ["tail", "-f", "--tag", tag, "--checkpoint", str(checkpoint)]
    tail = RunningCli(arguments, cli_environment(",".join(urls))).start()
    retry = RetryPolicy(attempts_max=40, backoff_initial_s=0.05, backoff_max_s=0.5)
    try:
        with Client(urls[1:], retry=retry, timeout_s=10) as writer:
            posted = [writer.post(n, tags=[tag]) for n in range(10)]
            assert ids(tail.take(10)) == [change.id for change in posted]
            read_first.kill()
            posted += [writer.post(n, tags=[tag]) for n in range(10, 20)]
            assert ids(tail.take(10)) == [change.id for change in posted[10:]]
            wait_until(lambda: checkpoint_id(checkpoint) == posted[-1].id, 10)
            assert tail.signal(signal.SIGTERM) == 0
            assert tail.rest() == []
            later = [writer.post(n, tags=[tag]) for n in range(20, 23)]
        resumed = run_cli(
            "tail", "--tag", tag, "--checkpoint", str(checkpoint), servers=",".join(urls[1:])
        )
        assert ids(resumed.stdout.splitlines()) == [change.id for change in later]
        assert checkpoint_id(checkpoint) == later[-1].id
    finally:
        tail.stop()


# A stop never waits for the long poll in flight (30 s): well under it.
STOP_WITHIN_S = 5.0


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_while_waiting_exits_0_at_once(url: str, number: int) -> None:
    """Signals sent at varied moments after a batch, while the tail goes back to its
    long poll (the moment a signal handler could miss: just before `poll()`)."""
    for delay_s in (0.0, 0.001, 0.005, 0.02, 0.1):
        tag = uuid.uuid4().hex
        tail = RunningCli(["tail", "-f", "--tag", tag], cli_environment(url)).start()
        try:
            with Client(url) as client:
                posted = client.post("one", tags=[tag])
            assert ids(tail.take(1)) == [posted.id]
            threading.Event().wait(delay_s)  # a moment to vary, not to synchronize
            assert tail.signal(number, timeout_s=STOP_WITHIN_S) == 0
            assert tail.stderr() == ""
        finally:
            tail.stop()


def test_a_purge_gap_exits_1_naming_the_way_on(tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "data", ["--purge-interval", "0.05"]).start()
    try:
        url = f"http://127.0.0.1:{node.port}"
        with Client(url) as client:
            posted = [client.post(n) for n in range(10)]
            settings = "minPurgeRecords: 3\nminPurgeDuration: 1ms\n"
            client.set_config(settings)
            wait_until(lambda: client.changes(since=posted[0].id).missed, 30, 0.05)
            first_retained = client.changes(since=posted[0].id).first_retained
        assert first_retained is not None
        gap = run_cli("tail", "--since", str(posted[0].id), servers=url)
        assert gap.returncode == 1
        message = one_error_line(gap)
        assert "purged" in message and f"--since {first_retained - 1}" in message
        assert "--skip-missed" in message
        skipped = run_cli("tail", "--since", str(posted[0].id), "--skip-missed", servers=url)
        assert skipped.returncode == 0
        assert ids(skipped.stdout.splitlines())[0] == first_retained
        assert ids(skipped.stdout.splitlines())[-1] == posted[-1].id
    finally:
        node.stop()


def test_tail_follows_across_kill_of_the_leader_it_reads(cluster: Cluster) -> None:
    tag = uuid.uuid4().hex
    leader = cluster.leader()
    order = [leader, *(node for node in cluster.nodes if node is not leader)]
    urls = [f"http://127.0.0.1:{node.port}" for node in order]
    tail = RunningCli(["tail", "-f", "--tag", tag], cli_environment(",".join(urls))).start()
    retry = RetryPolicy(attempts_max=40, backoff_initial_s=0.05, backoff_max_s=0.5)
    try:
        with Client(urls[1:], retry=retry, timeout_s=10) as writer:
            posted = [writer.post(n, tags=[tag]) for n in range(10)]
            assert ids(tail.take(10)) == [change.id for change in posted]
            leader.kill()  # the member read, and the leader: a new one is elected
            posted += [writer.post(n, tags=[tag]) for n in range(10, 20)]
            assert ids(tail.take(10)) == [change.id for change in posted[10:]]
        assert tail.signal(signal.SIGTERM) == 0
        assert tail.rest() == []
    finally:
        tail.stop()
