"""Test certificates made with the `openssl` command line (the `cryptography`
package is not installed): a cluster CA, node certificates it signs, and a
rogue CA with its own node certificate."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

EXTENSIONS = (
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "basicConstraints=CA:FALSE\n"
)


@dataclass(frozen=True)
class Identity:
    cert: str
    key: str
    ca: str


def _openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}",
    )  # fmt: skip
    return cert, key


def make_node(directory: Path, name: str, ca: tuple[Path, Path]) -> Identity:
    cert, key, request = (directory / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr"))
    extensions = directory / f"{name}.ext"
    extensions.write_text(EXTENSIONS)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions),
    )  # fmt: skip
    return Identity(str(cert), str(key), str(ca[0]))
