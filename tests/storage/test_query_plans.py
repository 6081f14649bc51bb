"""The queries that must stay cheap on a big log use an index, never a table scan."""

from __future__ import annotations

from pathlib import Path

import pytest

from changeagent.storage import reads, schema, writer

QUERIES: dict[str, tuple[str, tuple[object, ...], str]] = {
    "page": (reads._CHANGES_AFTER, (0, 10, 5), "INTEGER PRIMARY KEY"),
    "page by type": (reads._CHANGES_OF_TYPE_AFTER, (1, 0, 10, 5), "entries_by_type"),
    "page by tag": (reads._TAGGED_AFTER, ("a", 0, 10, 5), "PRIMARY KEY (tag=?"),
    "atStart by type": (reads._TYPE_AT_OR_BELOW, (1, 5), "entries_by_type"),
    "atStart by tag": (reads._TAG_AT_OR_BELOW, ("a", 5, 1), "PRIMARY KEY (tag=?"),
    "seek by tag": (reads._TAGGED_FROM, ("a", 0, 10, 5), "PRIMARY KEY (tag=?"),
    "seek by type": (reads._OF_TYPE_FROM, (1, 0, 10, 5), "COVERING INDEX entries_by_type"),
    "idempotency": (reads._KEY_INDEX, ("k",), "autoindex_idempotency"),
    "purge: nth newest": (reads.NTH_NEWEST_USER, (5, 2), "INTEGER PRIMARY KEY"),
    "truncate tags": ("DELETE FROM tags WHERE idx >= ?", (5,), "tags_by_idx"),
    "compact keys": ("DELETE FROM idempotency WHERE idx <= ?", (5,), "idempotency_by_idx"),
    "rows by index": (
        "SELECT idx FROM entries WHERE idx IN (?,?,?) ORDER BY idx", (1, 2, 3), "PRIMARY KEY"
    ),
    "first user": (writer._FIRST_USER_INDEX, (), "SCAN entries"),  # stops at the first row
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_query_plan_uses_an_index(tmp_path: Path, name: str) -> None:
    query, parameters, expected = QUERIES[name]
    schema.prepare_directory(tmp_path / "d")
    connection = schema.connect_writer(tmp_path / "d")
    try:
        plan = " | ".join(
            row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + query, parameters)
        )
    finally:
        connection.close()
    assert expected in plan, plan
    if name != "first user":
        assert "SCAN" not in plan, plan
