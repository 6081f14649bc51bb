"""An idle node does not import what only some requests or options need
(prometheus_client at the first scrape, yaml for settings files and /config,
psutil for /diagnostics, bcrypt with --password-file): ~3.4 MB of its RSS.
Checked in a fresh interpreter that serves a standalone node, writes and reads
a change, then scrapes /metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import asyncio, sys
from aiohttp.test_utils import TestClient, TestServer
from changeagent.api.app import build_app
from changeagent.config import Settings
from changeagent.node.node import Node, NodeLimits
from changeagent.storage import Storage
import changeagent.cli.serve, changeagent.server  # what `changeagent` imports to serve

LAZY = ("prometheus_client", "yaml", "psutil", "bcrypt")

def loaded():
    return sorted(name for name in LAZY if name in sys.modules)

async def main(directory):
    storage = Storage.open(directory)
    node = Node(storage, Settings(), None, NodeLimits())
    await node.start()
    client = TestClient(TestServer(build_app(node), host="127.0.0.1"))
    await client.start_server()
    try:
        posted = await client.post(
            "/changes", data=b'{"data":1}', headers={"Content-Type": "application/json"}
        )
        assert posted.status == 200, await posted.text()
        assert (await client.get("/changes")).status == 200
        print("serving:", loaded())
        metrics = await client.get("/metrics")
        assert metrics.status == 200 and b"changeagent_raft_term" in await metrics.read()
        print("scraped:", loaded())
    finally:
        await client.close()
        await node.close()
        storage.close()

asyncio.run(main(sys.argv[1]))
"""


def test_an_idle_node_imports_neither_metrics_nor_yaml_psutil_or_bcrypt(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert "serving: []" in lines, completed.stdout
    assert "scraped: ['prometheus_client']" in lines, completed.stdout
