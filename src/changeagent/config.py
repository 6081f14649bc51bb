"""The replicated settings (`/config`, the `-f` file) and their YAML form.

Settings use ChangeAgent's YAML names so that existing files keep working:
`minPurgeRecords`, `minPurgeDuration`, `electionTimeout`, `heartbeatTimeout` and
`webHooks` (a list of `{uri, headers}`), plus `archiveDir` (where each member keeps
what purges remove: `changeagent.archive`; relative to its data directory unless
absolute). Durations are Go syntax. The file is
rewritten atomically (temp file, fsync, rename) so a crash never leaves it half
written — ChangeAgent rewrote it in place without truncating.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from changeagent.durations import DurationError, format_duration_ns, parse_duration_ns

MILLISECOND_NS = 1_000_000
SECOND_NS = 1_000_000_000
HEARTBEAT_MIN_NS = 100 * MILLISECOND_NS
WEB_HOOKS_MAX = 16
ARCHIVE_DIR_BYTES_MAX = 4096  # PATH_MAX on Linux

# Defaults: see docs/ARCHITECTURE.md ("Timeouts") for why these values.
ELECTION_TIMEOUT_DEFAULT_NS = 1 * SECOND_NS
HEARTBEAT_TIMEOUT_DEFAULT_NS = 100 * MILLISECOND_NS

KNOWN_KEYS = frozenset(
    {
        "minPurgeRecords",
        "minPurgeDuration",
        "electionTimeout",
        "heartbeatTimeout",
        "webHooks",
        "archiveDir",
    }
)


class ConfigError(ValueError):
    """Settings that cannot be used; the message names the problem."""


@dataclass(frozen=True, slots=True)
class WebHook:
    uri: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    """The replicated configuration. Invariants are checked by `validate`."""

    min_purge_records: int = 0
    min_purge_duration_ns: int = 0
    election_timeout_ns: int = ELECTION_TIMEOUT_DEFAULT_NS
    heartbeat_timeout_ns: int = HEARTBEAT_TIMEOUT_DEFAULT_NS
    web_hooks: tuple[WebHook, ...] = field(default_factory=tuple)
    # Where every purge first archives what it removes ("" for nowhere). Each member
    # resolves a relative path against its own data directory.
    archive_dir: str = ""

    @property
    def purge_enabled(self) -> bool:
        return self.min_purge_records > 0 and self.min_purge_duration_ns > 0

    def validate(self) -> Settings:
        if self.min_purge_records < 0:
            raise ConfigError("minPurgeRecords must not be negative")
        if self.min_purge_duration_ns < 0:
            raise ConfigError("minPurgeDuration must not be negative")
        if self.heartbeat_timeout_ns < HEARTBEAT_MIN_NS:
            raise ConfigError("heartbeatTimeout must be at least 100ms")
        if self.election_timeout_ns < 2 * self.heartbeat_timeout_ns:
            raise ConfigError("electionTimeout must be at least twice heartbeatTimeout")
        if len(self.web_hooks) > WEB_HOOKS_MAX:
            raise ConfigError(f"at most {WEB_HOOKS_MAX} webHooks are allowed")
        if len(self.archive_dir.encode()) > ARCHIVE_DIR_BYTES_MAX or "\0" in self.archive_dir:
            raise ConfigError(f"archiveDir must be a path of at most {ARCHIVE_DIR_BYTES_MAX} bytes")
        return self


def settings_from_yaml(text: str | bytes, base: Settings | None = None) -> Settings:
    """Parse YAML settings; keys missing from `text` keep their values from `base`."""
    import yaml  # at first use: ~1 MB of an idle node's RSS when no settings file is used

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"invalid YAML: {_first_line(str(error))}") from None
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        raise ConfigError("configuration must be a YAML mapping")
    return settings_from_mapping(document, base or Settings())


def settings_from_mapping(document: Mapping[Any, Any], base: Settings) -> Settings:
    unknown = sorted(str(key) for key in document if key not in KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown configuration key {unknown[0]!r}")
    settings = base
    if "minPurgeRecords" in document:
        settings = replace(settings, min_purge_records=_integer(document, "minPurgeRecords"))
    if "minPurgeDuration" in document:
        duration_ns = _duration(document, "minPurgeDuration")
        settings = replace(settings, min_purge_duration_ns=duration_ns)
    if "electionTimeout" in document:
        settings = replace(settings, election_timeout_ns=_duration(document, "electionTimeout"))
    if "heartbeatTimeout" in document:
        settings = replace(settings, heartbeat_timeout_ns=_duration(document, "heartbeatTimeout"))
    if "webHooks" in document:
        settings = replace(settings, web_hooks=_web_hooks(document["webHooks"]))
    if "archiveDir" in document:
        settings = replace(settings, archive_dir=_path(document, "archiveDir"))
    return settings.validate()


def settings_to_yaml(settings: Settings) -> str:
    import yaml

    document: dict[str, Any] = {
        "minPurgeRecords": settings.min_purge_records,
        "minPurgeDuration": format_duration_ns(settings.min_purge_duration_ns),
        "electionTimeout": format_duration_ns(settings.election_timeout_ns),
        "heartbeatTimeout": format_duration_ns(settings.heartbeat_timeout_ns),
    }
    if settings.web_hooks:
        document["webHooks"] = [_web_hook_document(hook) for hook in settings.web_hooks]
    if settings.archive_dir:
        document["archiveDir"] = settings.archive_dir
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def load_settings_file(path: Path) -> Settings:
    """Read the `-f` file; write the defaults there first when it does not exist."""
    if not path.exists():
        settings = Settings()
        write_settings_file(path, settings)
        return settings
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    try:
        return settings_from_yaml(text)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def write_settings_file(path: Path, settings: Settings) -> None:
    """Replace the file atomically: a crash leaves either the old or the new file."""
    directory = path.parent if str(path.parent) else Path(".")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(settings_to_yaml(settings))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _integer(document: Mapping[Any, Any], key: str) -> int:
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer")
    return int(value)


def _path(document: Mapping[Any, Any], key: str) -> str:
    """A file system path; null or "" for none."""
    value = document[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a directory path (text), or empty for none")
    return value.strip()


def _duration(document: Mapping[Any, Any], key: str) -> int:
    value = document[key]
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a duration such as 300ms, 10s or 1h30m")
    try:
        return parse_duration_ns(value)
    except DurationError as error:
        raise ConfigError(f"{key}: {error}") from None


def _web_hooks(value: Any) -> tuple[WebHook, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("webHooks must be a list of {uri, headers}")
    return tuple(_web_hook(item, position) for position, item in enumerate(value))


def _web_hook(item: Any, position: int) -> WebHook:
    where = f"webHooks[{position}]"
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where} must be a mapping with uri and optional headers")
    unknown = sorted(str(key) for key in item if key not in ("uri", "headers"))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    uri = item.get("uri")
    if not isinstance(uri, str) or urlsplit(uri).scheme not in ("http", "https"):
        raise ConfigError(f"{where}.uri must be an http or https URL")
    headers = item.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(name, str) and isinstance(text, str) for name, text in headers.items()
    ):
        raise ConfigError(f"{where}.headers must map header names to strings")
    return WebHook(uri=uri, headers=tuple(sorted(headers.items())))


def _web_hook_document(hook: WebHook) -> dict[str, Any]:
    document: dict[str, Any] = {"uri": hook.uri}
    if hook.headers:
        document["headers"] = dict(hook.headers)
    return document


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unparseable"
