"""Prometheus metrics of one node (`GET /metrics`), built with prometheus_client.

Each node has its own `CollectorRegistry` (tests run several nodes in one
process, and the library's global registry would mix them). The values come
from four places, chosen so that the write path pays (almost) nothing:

- `NodeCollector` reads `Node.status()` (a frozen picture) and `Node.counters()`
  at scrape time: every gauge (term, indices, leadership, long-polls, each
  peer's match index on the leader, changes stored) and the runtime's counters
  (leader changes, proposals, purged entries). Nothing is updated per write.
- The storage calls `StorageCommits.observe` on its writer thread once per
  transaction (one fsync, however many writes it carries): the fsync and
  batch-size histograms, kept as plain numbers.
- The API's outermost middleware calls `RequestCounts.observe` once per
  answered request with a bounded route label (the route's canonical path,
  e.g. "/changes/{id}", never the raw path). It adds to plain numbers on the
  event loop (about 0.3 µs; a prometheus_client Counter and Histogram child
  cost 1.1 µs, with two locks), which the same object turns into metric
  families when scraped.
- prometheus_client's process, platform and GC collectors.

Ids in labels are base 36, as everywhere a person sees them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from changeagent.ids import format_id
from changeagent.node.node import Node
from changeagent.raft import Role
from changeagent.version import package_version

# prometheus_client is imported at the first scrape, not at start: the hot paths add
# to plain numbers, and the library is ~1.1 MB of an idle node's RSS (issue 15).
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

FSYNC_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS_ENTRIES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
# Long-polls hold a request for up to --max-block (600 s by default).
REQUEST_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
)  # fmt: skip
# Methods outside this set (any token is a valid HTTP method) share one label value.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "(unmatched)"  # no route matched: 404, 405, a malformed request


class NodeMetrics:
    """The registry of one node, and the two observation points of the hot paths."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._registry: CollectorRegistry | None = None
        self.commits = StorageCommits()
        self.requests = RequestCounts()
        node.storage.commit_observer = self.commits.observe

    @property
    def registry(self) -> CollectorRegistry:
        """The node's registry, made (and prometheus_client imported) on first use."""
        if self._registry is None:
            import prometheus_client

            # The `_created` series (a timestamp per counter and histogram) are noise here.
            prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
            registry = prometheus_client.CollectorRegistry()
            prometheus_client.ProcessCollector(registry=registry)
            prometheus_client.PlatformCollector(registry=registry)
            prometheus_client.GCCollector(registry=registry)
            registry.register(NodeCollector(self._node))
            registry.register(self.commits)
            registry.register(self.requests)
            self._registry = registry
        return self._registry

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when `accept` asks for it)
        and its Content-Type. On the event loop: it reads the node's state."""
        from prometheus_client.exposition import choose_encoder

        registry = self.registry
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type


def new_buckets(bounds: tuple[float, ...]) -> list[float]:
    """A histogram's numbers in one list: the sum, then a count per bound, +Inf last."""
    return [0.0] * (len(bounds) + 2)


def add_histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    bounds: tuple[float, ...],
    numbers: list[float],
) -> None:
    """Add `numbers` (see `new_buckets`) to `family` as cumulative buckets."""
    from prometheus_client.utils import floatToGoString

    snapshot = list(numbers)  # one copy under the GIL: the writer thread may add meanwhile
    cumulative, buckets = 0.0, []
    for bound, number in zip([*map(floatToGoString, bounds), "+Inf"], snapshot[1:], strict=True):
        cumulative += number
        buckets.append((bound, cumulative))
    family.add_metric(labels, buckets, sum_value=snapshot[0])


class StorageCommits:
    """The fsync and batch-size histograms, as plain numbers: the storage's writer
    thread adds to them (`observe`, once per transaction: a bisect and a few
    increments; prometheus_client's Histogram took ~1.5 µs with its locks) and
    scrapes read a copy. A scrape racing a commit may see a sum one observation
    behind its buckets."""

    def __init__(self) -> None:
        self._fsync_s = new_buckets(FSYNC_BUCKETS_S)
        self._entries = new_buckets(BATCH_BUCKETS_ENTRIES)

    def observe(self, fsync_s: float, entries: int) -> None:
        """Storage writer thread: one transaction committed."""
        fsync = self._fsync_s
        fsync[0] += fsync_s
        fsync[1 + bisect_left(FSYNC_BUCKETS_S, fsync_s)] += 1
        if entries:
            batch = self._entries
            batch[0] += entries
            batch[1 + bisect_left(BATCH_BUCKETS_ENTRIES, entries)] += 1

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import HistogramMetricFamily

        fsync = HistogramMetricFamily(
            "changeagent_storage_fsync_seconds",
            "Time of each storage COMMIT: the WAL write and its fsync (one per transaction).",
        )
        add_histogram(fsync, [], FSYNC_BUCKETS_S, self._fsync_s)
        yield fsync
        batch = HistogramMetricFamily(
            "changeagent_storage_batch_entries",
            "Log entries written by each storage transaction that wrote any (group commit).",
        )
        add_histogram(batch, [], BATCH_BUCKETS_ENTRIES, self._entries)
        yield batch


def add_duration(numbers: list[float], duration_s: float) -> None:
    """One request of `duration_s` into `RequestCounts.numbers(...)`. The API's
    middleware does the same inline: this runs for every request."""
    numbers[0] += duration_s
    numbers[1 + bisect_left(REQUEST_BUCKETS_S, duration_s)] += 1  # the last: +Inf


class RequestCounts:
    """Answered requests by (route, method, status): the duration histogram's
    numbers (see `new_buckets`), whose total is the count. Event loop only."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str, int], list[float]] = {}

    def numbers(self, route: str, method: str, status: int) -> list[float]:
        """The numbers (see `new_buckets`) of (route, method, status), made on first
        use, for `add_duration`. `route` must come from a bounded set (see the API)."""
        if method not in METHODS:
            method = OTHER_METHOD
        stats = self._stats.get((route, method, status))
        if stats is None:
            stats = self._stats[route, method, status] = new_buckets(REQUEST_BUCKETS_S)
        return stats

    def observe(self, route: str, method: str, status: int, duration_s: float) -> None:
        """One answered request."""
        add_duration(self.numbers(route, method, status), duration_s)

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        requests = CounterMetricFamily(
            "changeagent_http_requests",
            "HTTP requests answered, by route (canonical path), method and status code.",
            labels=["route", "method", "code"],
        )
        by_route: dict[str, list[float]] = {}
        for (route, method, status), stats in sorted(self._stats.items()):
            requests.add_metric([route, method, str(status)], sum(stats[1:]))
            total = by_route.setdefault(route, new_buckets(REQUEST_BUCKETS_S))
            for position, number in enumerate(stats):
                total[position] += number
        yield requests
        durations = HistogramMetricFamily(
            "changeagent_http_request_duration_seconds",
            "Time from reading a request to having written its answer, by route.",
            labels=["route"],
        )
        for route, total in by_route.items():
            add_histogram(durations, [route], REQUEST_BUCKETS_S, total)
        yield durations


class NodeCollector:
    """Gauges and the runtime's counters, read from the node when scraped."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        node = self._node
        yield from _counters(node)
        yield _gauge(
            "changeagent_node_failed",
            "1 once this node has failed stop (storage failure, corrupt data, a bug); "
            "restart it to recover.",
            1 if node.failure else 0,
        )
        try:
            status = node.status()
        except Exception:  # Raft not started yet, or storage unreadable (corrupt)
            return
        info = GaugeMetricFamily(
            "changeagent_node_info",
            "This node's id and cluster id (base 36; cluster 0: standalone) and version.",
            labels=["node", "cluster", "version"],
        )
        info.add_metric(
            [format_id(status.node_id), format_id(status.cluster_id), package_version()], 1
        )
        yield info
        yield _gauge("changeagent_raft_term", "Current Raft term.", status.term)
        yield _gauge(
            "changeagent_raft_commit_index", "Highest log index known committed.",
            status.committed_index,
        )  # fmt: skip
        yield _gauge(
            "changeagent_raft_applied_index", "Highest log index applied (visible to reads).",
            status.applied_index,
        )  # fmt: skip
        yield _gauge(
            "changeagent_raft_last_index", "Last index in this node's log.", status.last_index
        )
        yield _gauge(
            "changeagent_raft_is_leader", "1 on the leader (a standalone node leads itself).",
            1 if status.role is Role.LEADER else 0,
        )  # fmt: skip
        yield _gauge(
            "changeagent_raft_voters", "Voting members in this node's membership.",
            len(status.voters),
        )  # fmt: skip
        yield _gauge(
            "changeagent_long_polls_waiting", "GET /changes long-polls waiting for a change.",
            status.long_polls,
        )  # fmt: skip
        yield _gauge(
            "changeagent_changes_stored",
            "Log entries this node holds: its changes and the few internal entries "
            "(no-ops, settings, membership, purges).",
            max(0, status.last_index - status.first_index + 1),
        )
        match = GaugeMetricFamily(
            "changeagent_peer_match_index",
            "On the leader: the highest index known replicated on each peer (base-36 id).",
            labels=["peer"],
        )
        for peer, progress in sorted(status.peers.items()):
            match.add_metric([format_id(peer)], progress.match)
        yield match


def _counters(node: Node) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily

    counters = node.counters()
    for name, documentation, value in (
        (
            "changeagent_raft_leader_changes",
            "Times this node saw a new leader (the first one included).",
            counters.leader_changes,
        ),
        (
            "changeagent_proposals_committed",
            "Entries proposed on this node (as leader) and committed.",
            counters.proposals_committed,
        ),
        (
            "changeagent_proposals_failed",
            "Entries proposed on this node that were refused or lost before committing.",
            counters.proposals_failed,
        ),
        (
            "changeagent_proposals_at_once",
            "Entries proposed on this node (as leader) handled in the call that made them "
            "(one writer at a time), not batched by the Ready loop.",
            counters.proposals_at_once,
        ),
        (
            "changeagent_purged_changes",
            "Log entries removed from this node by purges.",
            counters.purged_entries,
        ),
        (
            "changeagent_seeds_sent",
            "Joining nodes this node (as leader) sent its committed log to as a file.",
            counters.seeds_sent,
        ),
        (
            "changeagent_seeded_entries",
            "Log entries this node took as a seed (a file from the leader) when it joined.",
            counters.seeded_entries,
        ),
    ):
        yield CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, documentation, value=value)
