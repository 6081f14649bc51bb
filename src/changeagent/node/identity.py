"""Who this node is: its id, and the cluster it belongs to (id and shared secret).

The node id is drawn once and kept in storage meta; the cluster id and secret
change only through `ClusterMembership.set_cluster` (create, join, leave), which
persists them first and then calls `adopt`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from changeagent.storage import Storage

META_NODE_ID = "node_id"
META_CLUSTER_ID = "cluster_id"
META_CLUSTER_SECRET = "cluster_secret"
# Written with a leader's snapshot that removes this node, cleared when it leaves
# (or joins): a restart between the two must still leave (ReplicatedState.recover).
META_REMOVED_BY_SNAPSHOT = "removed_by_snapshot"
NODE_ID_MAX = 2**63 - 1


@dataclass(slots=True)
class ClusterIdentity:
    """Invariant: cluster_id == 0 (standalone) exactly when secret is empty."""

    node_id: int
    cluster_id: int = 0
    secret: bytes = b""

    @classmethod
    def load(cls, storage: Storage) -> ClusterIdentity:
        """The stored identity; a new random node id (persisted by `start`) if none."""
        stored = storage.meta_get(META_NODE_ID)
        node_id = int(stored) if stored is not None else secrets.randbelow(NODE_ID_MAX) + 1
        cluster_id = int(storage.meta_get(META_CLUSTER_ID) or b"0")
        return cls(node_id, cluster_id, storage.meta_get(META_CLUSTER_SECRET) or b"")

    @property
    def standalone(self) -> bool:
        return self.cluster_id == 0

    def adopt(self, cluster_id: int, secret: bytes) -> None:
        """Take a cluster identity already persisted (see the module docstring)."""
        self.cluster_id, self.secret = cluster_id, secret


def cluster_meta(cluster_id: int, secret: bytes) -> dict[str, bytes]:
    """The storage meta that records a cluster identity (a new one: not removed)."""
    return {
        META_CLUSTER_ID: str(cluster_id).encode(),
        META_CLUSTER_SECRET: secret,
        META_REMOVED_BY_SNAPSHOT: b"",
    }
