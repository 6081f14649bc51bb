"""The systems under test, by name."""

from __future__ import annotations

from bench.systems.base import System
from bench.systems.changeagent import ChangeAgent
from bench.systems.etcd import Etcd
from bench.systems.redis import Redis

SYSTEMS: dict[str, type[System]] = {"changeagent": ChangeAgent, "etcd": Etcd, "redis": Redis}

__all__ = ["SYSTEMS", "ChangeAgent", "Etcd", "Redis", "System"]
