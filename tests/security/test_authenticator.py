"""The Basic-auth checker in-process: header parsing, the keyed cache, reloads, bounds."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from changeagent.api import auth
from changeagent.api.auth import Authenticator, parse_basic
from changeagent.api.errors import ApiError
from changeagent.config import ConfigError
from changeagent.node.errors import Overloaded
from tests.security.support import basic, htpasswd, htpasswd_delete

PASSWORD = "correct horse battery staple"
NO_POLLING_S = 3600.0  # the tests call reload() themselves


def header(user: str, password: str) -> str:
    return basic(user, password)["Authorization"]


def run(test: Callable[[Authenticator], Awaitable[None]], path: Path) -> None:
    async def main() -> None:
        authenticator = await Authenticator.open(path, poll_interval_s=NO_POLLING_S)
        try:
            await test(authenticator)
        finally:
            await authenticator.close()

    asyncio.run(main())


@pytest.fixture
def passwd(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    htpasswd(path, "alice", PASSWORD, "-B")
    return path


async def refused(authenticator: Authenticator, authorization: str | None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await authenticator.check(authorization)
    assert caught.value.status == 401
    assert caught.value.headers == {"WWW-Authenticate": 'Basic realm="changeagent"'}
    return caught.value


def test_right_wrong_and_missing_credentials(passwd: Path) -> None:
    async def test(authenticator: Authenticator) -> None:
        await authenticator.check(header("alice", PASSWORD))
        for bad in (
            None,
            "",
            "Bearer x",
            "Basic !!!",
            header("alice", "wrong"),
            header("nobody", PASSWORD),
            "Basic " + base64.b64encode(b"alice").decode(),
        ):
            error = await refused(authenticator, bad)
            assert PASSWORD not in error.message

    run(test, passwd)


def test_a_good_check_is_cached_under_a_keyed_digest(passwd: Path) -> None:
    async def test(authenticator: Authenticator) -> None:
        await authenticator.check(header("alice", PASSWORD))
        await authenticator.check(header("alice", PASSWORD))
        await refused(authenticator, header("alice", "wrong"))
        cache = authenticator._cache
        assert len(cache) == 1  # failures are never cached
        (digest,) = cache
        assert len(digest) == 32 and PASSWORD.encode() not in digest

    run(test, passwd)


def test_reload_drops_the_cache_and_removed_users(passwd: Path) -> None:
    async def test(authenticator: Authenticator) -> None:
        await authenticator.check(header("alice", PASSWORD))
        htpasswd(passwd, "bob", "bob-password", "-B")
        htpasswd_delete(passwd, "alice")
        assert await authenticator.reload()
        assert not authenticator._cache
        await refused(authenticator, header("alice", PASSWORD))
        await authenticator.check(header("bob", "bob-password"))
        assert not await authenticator.reload()  # unchanged

    run(test, passwd)


def test_broken_file_keeps_previous_users(passwd: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def test(authenticator: Authenticator) -> None:
        passwd.write_text(passwd.read_text() + "not an entry\n")
        assert not await authenticator.reload()
        await authenticator.check(header("alice", PASSWORD))
        assert "keeping the previous 1 users" in caplog.text

    run(test, passwd)


def test_the_cache_is_bounded(passwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "CACHE_ENTRIES_MAX", 2)
    for user in ("bob", "carol"):
        htpasswd(passwd, user, PASSWORD, "-B")

    async def test(authenticator: Authenticator) -> None:
        for user in ("alice", "bob", "carol"):
            await authenticator.check(header(user, PASSWORD))
        assert len(authenticator._cache) == 2
        await authenticator.check(header("alice", PASSWORD))  # evicted: checked again

    run(test, passwd)


def test_too_many_pending_bcrypt_checks_is_503(
    passwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "BCRYPT_PENDING_MAX", 0)

    async def test(authenticator: Authenticator) -> None:
        with pytest.raises(Overloaded):
            await authenticator.check(header("alice", PASSWORD))

    run(test, passwd)


def test_passwords_longer_than_72_bytes_match_as_htpasswd_hashed_them(passwd: Path) -> None:
    long_password = "p" * 100
    htpasswd(passwd, "long", long_password, "-B")

    async def test(authenticator: Authenticator) -> None:
        await authenticator.check(header("long", long_password))
        await refused(authenticator, header("long", "p" * 71))

    run(test, passwd)


def test_missing_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"-pw .*cannot read"):
        asyncio.run(Authenticator.open(tmp_path / "absent"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Basic " + base64.b64encode(b"u:p:q").decode(), (b"u", b"p:q")),
        ("basic " + base64.b64encode(b"u:").decode(), (b"u", b"")),
        ("Basic " + base64.b64encode(b":p").decode(), None),
        ("Basic", None),
        ("Digest abc", None),
    ],
)
def test_parse_basic(value: str, expected: tuple[bytes, bytes] | None) -> None:
    assert parse_basic(value) == expected


@pytest.mark.parametrize("key_bytes", [0, 1, 32, 64])
def test_keyed_sha256_is_hmac_sha256(key_bytes: int) -> None:
    import hashlib
    import hmac

    key = bytes(range(key_bytes))
    for message in (b"", b"alice\0" + PASSWORD.encode(), b"x" * 1000):
        assert auth.KeyedSha256(key)(message) == hmac.digest(key, message, hashlib.sha256)
