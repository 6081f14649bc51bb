"""Apache htpasswd files: parsing, and reloading when the file changes.

Only bcrypt entries (`$2y$`, as `htpasswd -B` writes them, and `$2a$`/`$2b$`)
can authenticate. Other kinds (MD5 `$apr1$`, `{SHA}`, crypt, plain text) are
weak or ambiguous, so their users are kept out and named once in the log.
Blank lines and `#` comments are skipped, as Apache does. A line that is not
`user:hash` makes the whole file broken: a half-written file must not silently
drop users, so the caller keeps the previous users instead.

Nothing here ever logs or reports the hash field: for plain-text entries it is
the password itself. Errors name line numbers and user names only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

log = logging.getLogger(__name__)

# A bcrypt hash: variant, two-digit cost (4..31), 22 salt + 31 hash characters.
BCRYPT_HASH = re.compile(rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# A password file this large is a mistake (a log file named by accident, say);
# refusing it bounds the memory and time a reload can take.
FILE_BYTES_MAX = 16 * 1024 * 1024


class PasswordFileError(Exception):
    """The password file cannot be read or is not an htpasswd file."""


@dataclass(frozen=True, slots=True)
class Users:
    """The users of one version of the file."""

    # User name -> bcrypt hash, for the entries that can authenticate.
    hashes: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    # Users whose entry is not bcrypt: they never authenticate.
    unsupported: frozenset[str] = frozenset()


def parse_htpasswd(text: bytes) -> Users:
    """Parse a whole file; raise PasswordFileError naming the first bad line."""
    hashes: dict[str, bytes] = {}
    unsupported: set[str] = set()
    for number, raw_line in enumerate(text.split(b"\n"), start=1):
        line = raw_line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, password_hash = _split_entry(line, number)
        if user in hashes or user in unsupported:
            continue  # Apache uses the first entry of a user; so do we.
        if BCRYPT_HASH.fullmatch(password_hash):
            hashes[user] = password_hash
        else:
            unsupported.add(user)
    return Users(MappingProxyType(hashes), frozenset(unsupported))


def _split_entry(line: bytes, number: int) -> tuple[str, bytes]:
    user, separator, password_hash = line.partition(b":")
    if not separator or not user.strip():
        raise PasswordFileError(f"line {number} is not 'user:hash'")
    try:
        name = user.strip().decode()
    except UnicodeDecodeError:
        raise PasswordFileError(f"line {number}: the user name is not UTF-8") from None
    return name, password_hash.strip()


@dataclass(frozen=True, slots=True)
class _Version:
    """What identifies one version of the file without reading it."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


class PasswordFile:
    """One htpasswd file on disk. Blocking: call it from a worker thread.

    `load()` reads it (at start); `refresh()` reads it again only when its
    inode, size or times changed (htpasswd rewrites through a new file), and
    returns the new users only when the content really changed, so touching
    the file does not drop the authentication cache.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._version: _Version | None = None
        self._digest = b""
        self._reported_unsupported: set[str] = set()

    def load(self) -> Users:
        users = self.refresh()
        return users if users is not None else Users()

    def refresh(self) -> Users | None:
        """The new users when the file changed, None when it did not; raises when broken.

        Each broken version (or a missing file) is reported once, not every poll.
        """
        text = self._read_if_changed()
        if text is None:
            return None
        digest = hashlib.sha256(text).digest()
        if digest == self._digest:
            return None
        users = parse_htpasswd(text)
        self._digest = digest
        self._report_unsupported(users)
        return users

    def _read_if_changed(self) -> bytes | None:
        try:
            with open(self.path, "rb") as file:
                version = _version_of(os.fstat(file.fileno()))
                if version == self._version:
                    return None
                self._version = version
                text = file.read(FILE_BYTES_MAX + 1)
        except OSError as error:
            if self._version == _UNREADABLE:
                return None
            self._version = _UNREADABLE
            raise PasswordFileError(f"cannot read it: {error.strerror or error}") from None
        if len(text) > FILE_BYTES_MAX:
            raise PasswordFileError(f"it is larger than {FILE_BYTES_MAX} bytes")
        return text

    def _report_unsupported(self, users: Users) -> None:
        for user in sorted(users.unsupported - self._reported_unsupported):
            log.warning(
                "password file %s: user %r has a non-bcrypt entry and cannot log in "
                "(make it with htpasswd -B)",
                self.path,
                user,
            )
        self._reported_unsupported |= users.unsupported


# Stands for "could not be opened", so that a missing file is reported once.
_UNREADABLE = _Version(-1, -1, -1, -1)


def _version_of(status: os.stat_result) -> _Version:
    return _Version(status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
