"""Settings: YAML parsing with ChangeAgent's names, validation, atomic file writes."""

import os
import stat
from pathlib import Path

import pytest

from changeagent.config import (
    ConfigError,
    Settings,
    WebHook,
    load_settings_file,
    settings_from_yaml,
    settings_to_yaml,
    write_settings_file,
)

S = 1_000_000_000


def test_defaults_round_trip() -> None:
    assert settings_from_yaml(settings_to_yaml(Settings())) == Settings()


def test_changeagent_sample_file() -> None:
    text = (
        "minPurgeRecords: 123\nminPurgeDuration: 1h\nelectionTimeout: 10m\n"
        "heartbeatTimeout: 1s\nwebHooks:\n- uri: http://localhost:9999/hook\n"
        "  headers:\n    foo: bar\n- uri: https://example.invalid/x\n"
    )
    settings = settings_from_yaml(text)
    assert settings.min_purge_records == 123
    assert settings.min_purge_duration_ns == 3600 * S
    assert settings.election_timeout_ns == 600 * S
    assert settings.heartbeat_timeout_ns == S
    assert settings.web_hooks == (
        WebHook("http://localhost:9999/hook", (("foo", "bar"),)),
        WebHook("https://example.invalid/x"),
    )
    assert settings.purge_enabled


def test_string_zero_duration_from_changeagent_readme() -> None:
    assert settings_from_yaml('minPurgeDuration: "0"').min_purge_duration_ns == 0


def test_missing_keys_keep_base_values() -> None:
    base = settings_from_yaml("electionTimeout: 20s\nheartbeatTimeout: 5s\nminPurgeRecords: 7")
    updated = settings_from_yaml("minPurgeRecords: 9", base=base)
    assert updated.election_timeout_ns == 20 * S
    assert updated.heartbeat_timeout_ns == 5 * S
    assert updated.min_purge_records == 9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("heartbeatTimeout: 50ms", "heartbeatTimeout must be at least 100ms"),
        ("electionTimeout: 1s\nheartbeatTimeout: 600ms", "at least twice heartbeatTimeout"),
        ("minPurgeRecords: -1", "minPurgeRecords must not be negative"),
        ("minPurgeRecords: ten", "minPurgeRecords must be an integer"),
        ("electionTimeout: 10", "electionTimeout must be a duration"),
        ("electionTimeout: 10 parsecs", "electionTimeout: invalid duration"),
        ("colour: blue", "unknown configuration key 'colour'"),
        ("- 1\n- 2", "configuration must be a YAML mapping"),
        ("a: [", "invalid YAML"),
        ("webHooks: 3", "webHooks must be a list"),
        ("webHooks:\n- uri: ftp://x", "webHooks[0].uri must be an http or https URL"),
        ("webHooks:\n- uri: http://x\n  headers: {a: 1}", "webHooks[0].headers"),
        ("webHooks:\n- uri: http://x\n  colour: red", "unknown key 'colour'"),
    ],
)
def test_invalid_settings_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        settings_from_yaml(text)
    assert message in str(raised.value)


def test_missing_file_gets_defaults_written(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    assert load_settings_file(path) == Settings()
    assert settings_from_yaml(path.read_text()) == Settings()


def test_invalid_file_names_path_and_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("heartbeatTimeout: 1ms\n")
    with pytest.raises(ConfigError) as raised:
        load_settings_file(path)
    assert str(path) in str(raised.value)
    assert "heartbeatTimeout" in str(raised.value)


def test_rewrite_is_atomic_and_truncates(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("minPurgeRecords: 1\n" + "# padding\n" * 500)
    write_settings_file(path, Settings(min_purge_records=2))
    assert load_settings_file(path).min_purge_records == 2
    assert "padding" not in path.read_text()
    assert [entry.name for entry in tmp_path.iterdir()] == ["config.yaml"]
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0
