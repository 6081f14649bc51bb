"""Purge: old changes go, at least minPurgeRecords stay, consumers are told what they missed."""

from __future__ import annotations

from pathlib import Path

from tests.support.server import ServerProcess, wait_until


def test_purge_keeps_minimum_and_reports_missed_changes(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("minPurgeRecords: 3\nminPurgeDuration: 1ms\n")
    server = ServerProcess(
        tmp_path / "d", ["-f", str(settings), "--purge-interval", "0.05"]
    ).start()
    try:
        ids = [
            server.post_change({"data": n}, {"Idempotency-Key": f"k{n}"}).json()["_id"]
            for n in range(10)
        ]

        def purged() -> bool:
            changes = server.get_changes().json()["changes"]
            return [change["_id"] for change in changes] == ids[-3:]

        wait_until(purged, timeout_s=15)
        page = server.get_changes().json()
        assert page["missedChanges"] is True
        assert page["firstRetained"] > ids[-4]
        assert page["atStart"] is True
        assert server.request("GET", f"/changes/{ids[0]}").status == 404
        assert server.request("GET", f"/changes/{ids[-1]}").status == 200
        # A consumer already past the purge point sees the ordinary shape.
        current = server.get_changes(since=ids[-3]).json()
        assert "missedChanges" not in current and len(current["changes"]) == 2
        # Idempotency keys expire with the history that held them.
        again = server.post_change({"data": "new"}, {"Idempotency-Key": "k0"}).json()
        assert again["_id"] > ids[-1]
        # Kept after restart too, and ids are never reused.
        assert server.stop() == 0
        restarted = ServerProcess(tmp_path / "d", ["-f", str(settings)]).start()
        try:
            kept = [change["_id"] for change in restarted.get_changes().json()["changes"]]
            assert kept[:3] == ids[-3:]
            assert restarted.post_change({"data": "x"}).json()["_id"] > again["_id"]
        finally:
            restarted.kill()
    finally:
        server.kill()


def test_no_purge_unless_both_settings_are_positive(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text("minPurgeRecords: 0\nminPurgeDuration: 1ms\n")
    server = ServerProcess(
        tmp_path / "d", ["-f", str(settings), "--purge-interval", "0.05"]
    ).start()
    try:
        for n in range(5):
            server.post_change({"data": n})
        # Wait for several purge checks to have run: the diagnostics report how many.
        wait_until(lambda: server.request("GET", "/diagnostics/raft").json()["purgeChecks"] >= 5)
        assert len(server.get_changes().json()["changes"]) == 5
    finally:
        server.kill()
