"""The simulator's events, and how a failure reports them.

Events are small frozen records. The trace keeps the last few hundred of them
(with the simulated time and a note written by the handler) in a bounded deque;
they are only turned into text when a run fails or runs verbosely, so tracing
costs almost nothing on the fast path.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from changeagent.raft.messages import Message, MessageType


@dataclass(frozen=True, slots=True)
class Tick:
    node: int
    incarnation: int  # ticks of a crashed incarnation are ignored


@dataclass(frozen=True, slots=True)
class Deliver:
    message: Message


@dataclass(frozen=True, slots=True)
class FsyncDone:
    node: int
    incarnation: int  # a crash before this event loses the staged write


@dataclass(frozen=True, slots=True)
class NoticesDue:
    """A leader's held commit notices go out (the driver's `HOLD_S` timer)."""

    node: int
    incarnation: int
    timer: int  # void unless the node's timer still has this value


@dataclass(frozen=True, slots=True)
class Chaos:
    """The fault and workload driver: picks one random action when it fires."""


@dataclass(frozen=True, slots=True)
class ClientRound:
    """Liveness phase: the client (re)submits its pending proposals to the leader."""


Event = Tick | Deliver | FsyncDone | NoticesDue | Chaos | ClientRound


def describe_message(message: Message) -> str:
    kind = MessageType(message.type).name
    text = f"{kind} {message.source}->{message.target} t{message.term}"
    if message.type in (MessageType.APPEND, MessageType.PRE_VOTE, MessageType.VOTE):
        text += f" log_term={message.log_term} index={message.index}"
    if message.entries:
        first, last = message.entries[0].index, message.entries[-1].index
        text += f" entries={first}..{last}"
    if message.commit:
        text += f" commit={message.commit}"
    if message.reject:
        text += f" REJECT hint={message.reject_hint}"
    elif message.type in (MessageType.APPEND_RESPONSE, MessageType.READ_INDEX_RESPONSE):
        text += f" index={message.index}"
    if message.snapshot is not None:
        text += f" snapshot={message.snapshot.index}@t{message.snapshot.term}"
    if message.context:
        text += f" context={message.context!r}"
    return text


def describe_event(event: Event) -> str:
    if isinstance(event, Tick):
        return f"tick {event.node}"
    if isinstance(event, Deliver):
        return "deliver " + describe_message(event.message)
    if isinstance(event, FsyncDone):
        return f"fsync {event.node}"
    if isinstance(event, NoticesDue):
        return f"commit notices {event.node}"
    if isinstance(event, Chaos):
        return "chaos"
    return "client round"


@dataclass(slots=True)
class TraceRecord:
    step: int
    time: int
    event: Event
    notes: list[str]
    lost: list[Message] = field(default_factory=list)  # sent but dropped by the network


@dataclass(slots=True)
class Trace:
    """The last `length` events, each with the notes its handler added."""

    length: int = 200
    records: deque[TraceRecord] = field(init=False)

    def __post_init__(self) -> None:
        self.records = deque(maxlen=self.length)

    def begin(self, step: int, time: int, event: Event) -> TraceRecord:
        record = TraceRecord(step, time, event, [])
        self.records.append(record)
        return record

    def lines(self) -> list[str]:
        return [format_record(record) for record in self.records]


def format_record(record: TraceRecord) -> str:
    text = f"#{record.step} @{record.time} {describe_event(record.event)}"
    if record.notes:
        text += " | " + "; ".join(record.notes)
    for message in record.lost:
        text += " | lost " + describe_message(message)
    return text
