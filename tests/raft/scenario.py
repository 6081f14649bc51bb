"""A small interpreter for data-driven scenario scripts (tests/raft/scenarios/*.txt).

A script is a sequence of commands, each on a line starting with "> ", followed by
the output it is expected to print. Blank lines and lines starting with "#" are
comments. Commands (node ids are integers):

    cluster N [learners=4,5] [bootstrap=1] [pre_vote=false] [check_quorum=false] ...
    add-node ID            start an empty node that will join
    campaign ID            start an election now (skipping pre-vote)
    tick ID [N]            tick one node N times (no delivery)
    tick-all [N]           N rounds of: tick every node, then settle
    propose ID DATA...     propose entries (prints their indices or the error)
    deliver                process Readies and deliver until quiet, printing messages
    settle                 the same, silently
    cut A->B | isolate ID | heal
    add-learner L ID | promote L ID | demote L ID | remove L ID
                           membership changes on leader L
    transfer L ID          leadership transfer
    read-index ID CTX      request a linearizable read
    compact ID INDEX       compaction on one node (and purge of its log)
    restart ID             crash and restart from persisted state
    status | log ID | read-states ID
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

from changeagent.raft import (
    ENTRY_TYPE_MEMBERSHIP,
    ENTRY_TYPE_NOOP,
    ConfChange,
    ConfChangeKind,
    Entry,
    Message,
    MessageType,
    RaftError,
)

from .harness import Cluster

MT = MessageType


def describe_entry(entry: Entry) -> str:
    if entry.type == ENTRY_TYPE_NOOP:
        what = "noop"
    elif entry.type == ENTRY_TYPE_MEMBERSHIP:
        change = ConfChange.decode(entry.data)
        what = f"{change.kind.name.lower().replace('_', '-')}({change.node_id})"
    else:
        what = entry.data.decode()
    return f"{entry.index}/{entry.term}:{what}"


def describe_message(m: Message) -> str:
    head = f"{m.source}->{m.target} {m.type.name} t{m.term}"
    if m.type in (MT.PRE_VOTE, MT.VOTE):
        forced = " transfer" if m.context else ""
        return f"{head} last={m.index}/{m.log_term}{forced}"
    if m.type in (MT.PRE_VOTE_RESPONSE, MT.VOTE_RESPONSE):
        return f"{head} {'rejected' if m.reject else 'granted'}"
    if m.type is MT.APPEND:
        entries = " ".join(describe_entry(e) for e in m.entries)
        return f"{head} prev={m.index}/{m.log_term} [{entries}] commit={m.commit}"
    if m.type is MT.APPEND_RESPONSE:
        if m.reject:
            return f"{head} rejected index={m.index} hint={m.reject_hint}/{m.log_term}"
        return f"{head} index={m.index}"
    if m.type is MT.HEARTBEAT:
        return f"{head} commit={m.commit} read-round={m.index}"
    if m.type is MT.HEARTBEAT_RESPONSE:
        return f"{head} read-round={m.index}"
    if m.type is MT.SNAPSHOT and m.snapshot is not None:
        voters = ",".join(map(str, sorted(m.snapshot.membership.voters)))
        return f"{head} snapshot={m.snapshot.index}/{m.snapshot.term} voters={voters}"
    if m.type in (MT.READ_INDEX, MT.READ_INDEX_RESPONSE):
        rejected = " rejected" if m.reject else ""
        return f"{head} index={m.index} ctx={m.context.decode()}{rejected}"
    return head


class Interpreter:
    def __init__(self) -> None:
        self.cluster = Cluster(1)
        self.output: list[str] = []
        self.commands: dict[str, Callable[[list[str]], object]] = {
            "cluster": self.do_cluster,
            "add-node": lambda a: self.cluster.add_node(int(a[0])),
            "campaign": lambda a: self.cluster.node(int(a[0])).campaign(),
            "tick": self.do_tick,
            "tick-all": lambda a: self.cluster.tick_all(int(a[0]) if a else 1),
            "propose": self.do_propose,
            "deliver": self.do_deliver,
            "settle": lambda a: self.cluster.deliver(),
            "cut": self.do_cut,
            "isolate": lambda a: self.cluster.isolate(int(a[0])),
            "heal": lambda a: self.cluster.heal(),
            "add-learner": lambda a: self.do_change(ConfChangeKind.ADD_LEARNER, a),
            "promote": lambda a: self.do_change(ConfChangeKind.PROMOTE, a),
            "remove": lambda a: self.do_change(ConfChangeKind.REMOVE, a),
            "demote": lambda a: self.do_change(ConfChangeKind.DEMOTE, a),
            "transfer": lambda a: self.cluster.node(int(a[0])).transfer_leadership(int(a[1])),
            "read-index": lambda a: self.cluster.node(int(a[0])).read_index(a[1].encode()),
            "read-states": self.do_read_states,
            "compact": self.do_compact,
            "restart": lambda a: self.cluster.restart(int(a[0])),
            "status": self.do_status,
            "log": self.do_log,
        }

    def run(self, command: str) -> list[str]:
        self.output = []
        name, *arguments = shlex.split(command)
        try:
            self.commands[name](arguments)
        except RaftError as error:
            self.output.append(f"error: {type(error).__name__}: {error}")
        return self.output

    def do_cluster(self, arguments: list[str]) -> None:
        options: dict[str, object] = {}
        learners: list[int] = []
        for option in arguments[1:]:
            key, value = option.split("=")
            if key == "learners":
                learners = [int(v) for v in value.split(",")]
            elif key == "bootstrap":
                options["bootstrap_index"] = int(value)
            elif value in ("true", "false"):
                options[key] = value == "true"
            else:
                options[key] = int(value)
        self.cluster = Cluster(int(arguments[0]), learners, **options)  # type: ignore[arg-type]

    def do_tick(self, arguments: list[str]) -> None:
        self.cluster.tick(int(arguments[0]), int(arguments[1]) if len(arguments) > 1 else 1)

    def do_propose(self, arguments: list[str]) -> None:
        indices = self.cluster.propose(int(arguments[0]), *(a.encode() for a in arguments[1:]))
        self.output.append(f"indices {indices.start}..{indices.stop - 1}")

    def do_deliver(self, arguments: list[str]) -> None:
        start = len(self.cluster.delivered)
        self.cluster.deliver()
        self.output.extend(describe_message(m) for m in self.cluster.delivered[start:])

    def do_cut(self, arguments: list[str]) -> None:
        source, target = arguments[0].split("->")
        self.cluster.cut.add((int(source), int(target)))

    def do_change(self, kind: ConfChangeKind, arguments: list[str]) -> None:
        index = self.cluster.change(int(arguments[0]), kind, int(arguments[1]))
        self.output.append(f"index {index}")

    def do_read_states(self, arguments: list[str]) -> None:
        peer = self.cluster.peers[int(arguments[0])]
        for state in peer.read_states:
            self.output.append(f"read index={state.index} ctx={state.context.decode()}")
        peer.read_states.clear()

    def do_compact(self, arguments: list[str]) -> None:
        node_id, index = int(arguments[0]), int(arguments[1])
        snapshot = self.cluster.node(node_id).compact(index, b"")
        self.cluster.peers[node_id].log.purge(snapshot)
        self.output.append(f"snapshot {snapshot.index}/{snapshot.term}")

    def do_status(self, arguments: list[str]) -> None:
        for node_id, peer in sorted(self.cluster.peers.items()):
            node = peer.node
            voters = ",".join(map(str, sorted(node.membership.voters)))
            learners = ",".join(map(str, sorted(node.membership.learners))) or "-"
            self.output.append(
                f"{node_id}: {node.role.name} term={node.term} leader={node.leader_id} "
                f"commit={node.commit_index} applied={node.applied_index} "
                f"last={node.last_index} voters={voters} learners={learners}"
            )

    def do_log(self, arguments: list[str]) -> None:
        log = self.cluster.peers[int(arguments[0])].log
        entries = " ".join(describe_entry(e) for e in log.ents)
        self.output.append(f"snapshot={log.snap.index}/{log.snap.term} [{entries}]")


def parse(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) pairs."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("> "):
            steps.append((line[2:].strip(), []))
        elif line.strip() and not line.startswith("#") and steps:
            steps[-1][1].append(line.rstrip())
    return steps


def run_script(path: Path, rewrite: bool = False) -> tuple[str, str]:
    """Return (expected, actual) traces; with `rewrite`, update the file's outputs."""
    text = path.read_text()
    interpreter = Interpreter()
    expected_lines: list[str] = []
    actual_lines: list[str] = []
    rewritten: list[str] = []
    steps = iter(parse(text))
    for line in text.splitlines():
        if line.startswith("> "):
            command, expected = next(steps)
            actual = interpreter.run(command)
            expected_lines += [f"> {command}", *expected]
            actual_lines += [f"> {command}", *actual]
            rewritten += [line, *actual]
        elif not line.strip() or line.startswith("#"):
            rewritten.append(line)
    if rewrite:
        path.write_text("\n".join(rewritten) + "\n")
    return "\n".join(expected_lines), "\n".join(actual_lines)
