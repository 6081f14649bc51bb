"""The htpasswd parser and the file's change detection (no server)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from changeagent.security.htpasswd import PasswordFile, PasswordFileError, parse_htpasswd
from tests.security.support import htpasswd

PLAIN_PASSWORD = "plain-text-secret-1"


def test_real_htpasswd_entries_bcrypt_kept_others_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    htpasswd(path, "alice", "a-password", "-B")
    htpasswd(path, "md5", "a-password", "-m")
    htpasswd(path, "sha", "a-password", "-s")
    htpasswd(path, "crypt", "pw", "-d")
    users = parse_htpasswd(path.read_bytes())
    assert set(users.hashes) == {"alice"}
    assert users.hashes["alice"].startswith(b"$2y$")
    assert users.unsupported == {"md5", "sha", "crypt"}


def test_comments_blank_lines_crlf_and_bcrypt_variants(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    htpasswd(path, "alice", "a-password", "-B")
    line = path.read_bytes().strip()
    body = line.split(b":", 1)[1]
    text = b"\r\n".join(
        [
            b"# made by htpasswd -B",
            b"",
            b"   ",
            line,
            b"bob:" + b"$2a$" + body[4:],
            b"carol:" + b"$2b$" + body[4:],
            b"  # an indented comment",
        ]
    )
    users = parse_htpasswd(text + b"\r\n")
    assert set(users.hashes) == {"alice", "bob", "carol"}
    assert not users.unsupported


def test_first_entry_of_a_user_wins_as_in_apache(tmp_path: Path) -> None:
    first = parse_htpasswd(b"u:{SHA}abc\nu:$2y$05$" + b"a" * 53 + b"\n")
    assert first.unsupported == {"u"} and not first.hashes


def test_malformed_bcrypt_is_unsupported_not_a_crash() -> None:
    users = parse_htpasswd(b"short:$2y$05$tooshort\ncost:$2y$99$" + b"a" * 53 + b"\n")
    assert users.unsupported == {"short", "cost"}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (b"alice:$2y$x\nnot an entry\n", 2),
        (b":$2y$nouser\n", 1),
        (b"\xff\xfe:$2y$05$x\n", 1),
    ],
)
def test_broken_lines_name_the_line_never_the_content(text: bytes, line: int) -> None:
    with pytest.raises(PasswordFileError, match=f"line {line}") as caught:
        parse_htpasswd(text)
    assert "$2y$" not in str(caught.value) and "entry" not in str(caught.value)


def test_plain_text_entries_never_reach_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"plainuser:{PLAIN_PASSWORD}\n")
    with caplog.at_level(logging.DEBUG):
        users = PasswordFile(path).load()
    assert users.unsupported == {"plainuser"}
    assert "plainuser" in caplog.text
    assert PLAIN_PASSWORD not in caplog.text


def test_refresh_reads_only_real_changes(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    htpasswd(path, "alice", "a-password", "-B")
    password_file = PasswordFile(path)
    assert set(password_file.load().hashes) == {"alice"}
    assert password_file.refresh() is None  # untouched
    os.utime(path, ns=(1, 1))
    assert password_file.refresh() is None  # touched, same content
    htpasswd(path, "bob", "b-password", "-B")
    changed = password_file.refresh()
    assert changed is not None and set(changed.hashes) == {"alice", "bob"}


def test_broken_or_missing_file_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    htpasswd(path, "alice", "a-password", "-B")
    password_file = PasswordFile(path)
    password_file.load()
    with path.open("ab") as file:
        file.write(b"garbage\n")
    with pytest.raises(PasswordFileError, match="line 2"):
        password_file.refresh()
    assert password_file.refresh() is None  # the same broken version: no second report
    path.unlink()
    with pytest.raises(PasswordFileError, match="cannot read"):
        password_file.refresh()
    assert password_file.refresh() is None
    htpasswd(path, "bob", "b-password", "-B")
    changed = password_file.refresh()
    assert changed is not None and set(changed.hashes) == {"bob"}


def test_missing_file_at_load_raises(tmp_path: Path) -> None:
    with pytest.raises(PasswordFileError, match="cannot read"):
        PasswordFile(tmp_path / "absent").load()


def test_unsupported_users_logged_once_across_reloads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "passwd"
    htpasswd(path, "md5user", "pw", "-m")
    password_file = PasswordFile(path)
    with caplog.at_level(logging.WARNING):
        password_file.load()
        htpasswd(path, "alice", "a-password", "-B")
        password_file.refresh()
    assert caplog.text.count("'md5user'") == 1
