"""changeagent: one ordered, durable change log served over HTTP, replicated with Raft.

Layers (dependencies point down): cli -> api -> node -> raft (pure core),
node -> storage (SQLite) and transport (peer links). See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
