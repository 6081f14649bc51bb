"""The `archiveDir` setting: parsed, validated, written back only when set, and
resolved per member (relative paths inside its data directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from changeagent.config import ConfigError, Settings, settings_from_yaml, settings_to_yaml
from changeagent.node.archiver import resolve_archive_dir


def test_archive_dir_round_trips_and_is_absent_by_default() -> None:
    assert "archiveDir" not in settings_to_yaml(Settings())
    settings = settings_from_yaml("archiveDir: ' purged '\nminPurgeRecords: 5\n")
    assert settings.archive_dir == "purged"
    assert settings_from_yaml(settings_to_yaml(settings)) == settings
    # Missing keys keep their values (PUT /config); null or "" turn it off.
    assert settings_from_yaml("minPurgeRecords: 6\n", base=settings).archive_dir == "purged"
    assert settings_from_yaml("archiveDir:\n", base=settings).archive_dir == ""
    assert settings_from_yaml("archiveDir: ''\n", base=settings).archive_dir == ""


@pytest.mark.parametrize("value", ["5", "[a, b]", "{a: 1}", "true"])
def test_archive_dir_must_be_text(value: str) -> None:
    with pytest.raises(ConfigError, match="archiveDir must be a directory path"):
        settings_from_yaml(f"archiveDir: {value}\n")


def test_archive_dir_length_and_nul_are_checked() -> None:
    with pytest.raises(ConfigError, match="at most 4096 bytes"):
        settings_from_yaml(f"archiveDir: {'a' * 4097}\n")
    with pytest.raises(ConfigError, match="at most 4096 bytes"):
        Settings(archive_dir="a\0b").validate()


def test_each_member_resolves_a_relative_archive_dir_in_its_data_directory() -> None:
    data_dir = Path("/var/lib/changeagent/n1")
    assert resolve_archive_dir("", data_dir) is None
    assert resolve_archive_dir("archive", data_dir) == data_dir / "archive"
    assert resolve_archive_dir("/srv/archive", data_dir) == Path("/srv/archive")
