"""kill -9 during a write load: every acknowledged change survives with its _id."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.support.server import ServerProcess


def write_until_killed(
    server: ServerProcess, acknowledged: dict[int, object], keys: dict[str, int], key_prefix: str
) -> None:
    for n in range(100_000):
        try:
            response = server.post_change({"data": n}, {"Idempotency-Key": f"{key_prefix}-{n}"})
        except OSError:
            return
        if response.status != 200:
            return
        change = response.json()
        acknowledged[change["_id"]] = change
        keys[f"{key_prefix}-{n}"] = change["_id"]


def test_kill_9_during_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "d").start()
    acknowledged: dict[int, object] = {}
    keys: dict[str, int] = {}
    writers = [
        threading.Thread(target=write_until_killed, args=(server, acknowledged, keys, f"w{i}"))
        for i in range(4)
    ]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()
    for writer in writers:
        writer.join(30)
    assert len(acknowledged) >= 300

    restarted = ServerProcess(tmp_path / "d").start()
    try:
        stored: dict[int, object] = {}
        since = 0
        while True:
            page = restarted.get_changes(since=since, limit=1000).json()
            stored.update({change["_id"]: change for change in page["changes"]})
            if page["atEnd"]:
                break
            since = page["changes"][-1]["_id"]
        for change_id, change in acknowledged.items():
            assert stored.get(change_id) == change
        # New writes never reuse an _id.
        fresh = restarted.post_change({"data": "after"}).json()
        assert fresh["_id"] > max(stored)
        # Idempotency survives the crash: retries of acknowledged writes return the originals.
        for key, change_id in list(keys.items())[:50]:
            retried = restarted.post_change({"data": "retry"}, {"Idempotency-Key": key})
            assert retried.status == 200
            assert retried.json() == acknowledged[change_id]
        assert restarted.get_changes(since=fresh["_id"]).json()["changes"] == []
    finally:
        restarted.kill()
