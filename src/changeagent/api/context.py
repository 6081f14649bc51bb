"""Typed access to what the handlers share through the aiohttp application."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from changeagent.api.caching import PageCaching
from changeagent.api.streams import StreamSlots
from changeagent.metrics import NodeMetrics
from changeagent.node.membership import ClusterMembership
from changeagent.node.node import Node


@dataclass(slots=True)
class ApiState:
    node: Node
    members: ClusterMembership
    metrics: NodeMetrics
    prefix: str = ""
    marked_down: bool = field(default=False)
    page_caching: PageCaching = field(default_factory=PageCaching)
    streams: StreamSlots = field(default_factory=StreamSlots)


STATE_KEY = web.AppKey("changeagent_state", ApiState)


def state_of(request: web.Request) -> ApiState:
    return request.app[STATE_KEY]
