"""HTTP Basic authentication against an htpasswd file (`-pw`).

Every request needs credentials except `GET /health` (load balancers probe it),
the peer channel at `CLUSTER_PATH`, whose HELLO handshake authenticates members
its own way, and, with `--public-reads`, reads of changes. A missing or wrong
credential is a 401 with `WWW-Authenticate: Basic realm="changeagent"`, answered
by the single error mapping (`api/errors.py`).

bcrypt is slow on purpose, so checks run in a small dedicated thread pool (they
never block the event loop, and a flood of bad passwords cannot starve storage
reads of the default pool), and at most `BCRYPT_PENDING_MAX` wait at once. A
successful check is remembered under HMAC-SHA256(per-process random key, user +
NUL + password): the cache never holds a password or a plain hash of one, and
after the first request a user's checks cost one HMAC. The cache is bounded and
dropped whenever the file's users change, so a removed user or a changed
password takes effect on the next reload (the file is polled every 5 s).
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from changeagent.api.errors import ApiError, Handler
from changeagent.config import ConfigError
from changeagent.node.errors import Overloaded
from changeagent.security.htpasswd import PasswordFile, PasswordFileError, Users
from changeagent.transport import CLUSTER_PATH

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 5.0
CHALLENGE = {"WWW-Authenticate": 'Basic realm="changeagent"'}
# Distinct (user, password) pairs remembered; beyond it the oldest is forgotten.
CACHE_ENTRIES_MAX = 10_000
# bcrypt checks running or queued; more is a flood, answered 503 without hashing.
BCRYPT_PENDING_MAX = 64
BCRYPT_THREADS = 2
# bcrypt only reads the first 72 bytes of a password (htpasswd hashed just those);
# the bcrypt package refuses longer ones instead of truncating, so we truncate.
BCRYPT_PASSWORD_BYTES_MAX = 72


class Authenticator:
    """The users of one password file, a cache of good credentials, the reload poller."""

    def __init__(self, password_file: PasswordFile, users: Users, poll_interval_s: float) -> None:
        self._file = password_file
        self._users = users
        self._poll_interval_s = poll_interval_s
        self._credential_digest = KeyedSha256(secrets.token_bytes(32))
        self._cache: dict[bytes, None] = {}  # insertion-ordered: the oldest goes first
        self._generation = 0  # bumped on every change of users
        self._pending = 0
        self._executor = ThreadPoolExecutor(BCRYPT_THREADS, thread_name_prefix="bcrypt")
        # Unknown users are checked against this hash too, so that the answer's
        # timing does not tell which user names exist. Cost 5 is htpasswd -B's default.
        import bcrypt  # at first use: ~0.4 MB of an idle node without --password-file

        self._decoy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=5))
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, poll_interval_s: float = POLL_INTERVAL_S) -> Authenticator:
        """Load the file and start polling it (stop with `close()`).

        A missing or broken file at start is a ConfigError (exit 2).
        """
        password_file = PasswordFile(path)
        try:
            users = await asyncio.to_thread(password_file.load)
        except PasswordFileError as error:
            raise ConfigError(f"-pw {path}: {error}") from None
        log.info("password file %s: %d users can log in", path, len(users.hashes))
        authenticator = cls(password_file, users, poll_interval_s)
        authenticator._poller = asyncio.create_task(
            authenticator._poll(), name="password-file-poller"
        )
        return authenticator

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # Reloading

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.reload()
            except Exception:  # a surprise must not end reloading for the node's life
                log.exception("password file %s: reload failed", self._file.path)

    async def reload(self) -> bool:
        """Read the file again if it changed; True when the users changed."""
        try:
            users = await asyncio.to_thread(self._file.refresh)
        except PasswordFileError as error:
            log.error(
                "password file %s: %s; keeping the previous %d users",
                self._file.path,
                error,
                len(self._users.hashes),
            )
            return False
        if users is None:
            return False
        self._users = users
        self._generation += 1
        self._cache.clear()
        log.warning(
            "password file %s reloaded: %d users can log in", self._file.path, len(users.hashes)
        )
        return True

    # Checking

    def is_cached(self, authorization: str | None) -> bool:
        """True when these exact credentials passed bcrypt since the last reload.

        The per-request path: one parse, one keyed hash, one lookup, no coroutine.
        """
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        return self._credential_digest(credentials[0] + b"\0" + credentials[1]) in self._cache

    async def check(self, authorization: str | None) -> None:
        """Return when `authorization` (the header) names a user of the file; raise 401."""
        credentials = parse_basic(authorization)
        if credentials is None:
            raise ApiError(401, "authentication required (HTTP Basic)", CHALLENGE)
        user, password = credentials
        digest = self._credential_digest(user + b"\0" + password)
        if digest in self._cache:
            return
        generation = self._generation
        if not await self._bcrypt_matches(user, password):
            raise ApiError(401, "wrong user name or password", CHALLENGE)
        if generation == self._generation:  # not from a file that has changed since
            self._remember(digest)

    async def _bcrypt_matches(self, user: bytes, password: bytes) -> bool:
        if self._pending >= BCRYPT_PENDING_MAX:
            raise Overloaded("too many authentication checks in progress; retry later")
        known_hash = self._hash_of(user)
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            matches = await loop.run_in_executor(
                self._executor, _bcrypt_check, password, known_hash or self._decoy_hash
            )
        finally:
            self._pending -= 1
        return matches and known_hash is not None

    def _hash_of(self, user: bytes) -> bytes | None:
        try:
            return self._users.hashes.get(user.decode())
        except UnicodeDecodeError:
            return None

    def _remember(self, digest: bytes) -> None:
        if len(self._cache) >= CACHE_ENTRIES_MAX:
            del self._cache[next(iter(self._cache))]
        self._cache[digest] = None


class KeyedSha256:
    """HMAC-SHA256 under one key (RFC 2104), with the padded key hashed once.

    `hmac.digest` sets up an OpenSSL HMAC context on every call, which measured
    ~10 µs per request inside the node (a tenth of a whole read); copying two
    prepared SHA-256 states gives the same digest for ~1 µs.
    """

    def __init__(self, key: bytes) -> None:
        block = key.ljust(64, b"\0")  # keys of at most one block (64 bytes) are padded
        if len(block) > 64:
            raise ValueError("the key must be at most 64 bytes")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))

    def __call__(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _bcrypt_check(password: bytes, password_hash: bytes) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password[:BCRYPT_PASSWORD_BYTES_MAX], password_hash))
    except ValueError:  # a hash bcrypt cannot read: never a match
        return False


def parse_basic(authorization: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from an `Authorization: Basic ...` header, None when absent or bad."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = binascii.a2b_base64(encoded.strip(), strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    user, separator, password = decoded.partition(b":")
    if not separator or not user:
        return None
    return user, password


def auth_middleware(
    authenticator: Authenticator, prefix: str, public_reads: bool = False
) -> Middleware:
    """The middleware for `build_app`; it must run inside the error middleware.
    `public_reads` (--public-reads): reading changes (GET /changes, GET
    /changes/{id}) needs no credentials; everything else still does."""
    health = prefix + "/health"
    changes = prefix + "/changes"
    change = changes + "/"
    # The peer channel is exempt at both paths it may be mounted at; an exempt
    # path without a route just answers 404.
    peer_paths = {prefix + CLUSTER_PATH, CLUSTER_PATH}

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        public = public_reads and request.method in ("GET", "HEAD")
        public = public and (path == changes or path.startswith(change))
        if not public and path not in peer_paths and (path != health or request.method != "GET"):
            authorization = request.headers.get("Authorization")
            if not authenticator.is_cached(authorization):
                await authenticator.check(authorization)
        return await handler(request)

    return authenticate
