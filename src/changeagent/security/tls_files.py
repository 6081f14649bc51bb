"""The certificate, key and CA files named on the command line, and their SSL contexts.

The CLI checks that the flags go together; the files themselves are read when
the node starts (`server_context()` and friends), and a file that cannot be
used stops the node with a ConfigError naming the flag, before anything listens.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from changeagent.config import ConfigError
from changeagent.transport import tls


@dataclass(frozen=True, slots=True)
class ApiTls:
    """`-cert`/`-key` (and `-cas`): the API's TLS listener on `-sp`."""

    cert_file: Path
    key_file: Path
    # With client CAs, every client must present a certificate signed by one of them.
    client_ca_file: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        client_ca = str(self.client_ca_file) if self.client_ca_file is not None else None
        return _loaded(
            "-cert/-key/-cas",
            lambda: tls.api_server_context(str(self.cert_file), str(self.key_file), client_ca),
        )


@dataclass(frozen=True, slots=True)
class ClusterTls:
    """`-ccert`/`-ckey`/`-cca`: mutual TLS between members on the cluster port `-cp`."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def server_context(self) -> ssl.SSLContext:
        return _loaded(
            "-ccert/-ckey/-cca",
            lambda: tls.server_context(*self._paths()),
        )

    def client_context(self) -> ssl.SSLContext:
        return _loaded(
            "-ccert/-ckey/-cca",
            lambda: tls.client_context(*self._paths()),
        )

    def _paths(self) -> tuple[str, str, str]:
        return str(self.cert_file), str(self.key_file), str(self.ca_file)


def _loaded(flags: str, build: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    # ssl.SSLError is an OSError; both mean the files cannot be used as given.
    try:
        return build()
    except OSError as error:
        raise ConfigError(f"{flags}: cannot load the TLS files: {error}") from None
