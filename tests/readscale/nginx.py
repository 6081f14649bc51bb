"""Debian's nginx run with the project's deploy/nginx.conf, pointed at test members."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import LOOPBACK, free_port
from tests.support.server import wait_until

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
UPSTREAM_SERVERS = re.compile(r"(?:^\s*server 127\.0\.0\.1:\d+[^\n]*\n)+", re.MULTILINE)


def nginx_missing() -> str | None:
    return None if shutil.which("nginx") else "nginx is not installed (apt-get install nginx)"


def configured(members: list[int], port: int) -> str:
    """deploy/nginx.conf with these member ports upstream and this listen port."""
    text = CONFIG.read_text()
    lines = "".join(
        f"        server {LOOPBACK}:{member} max_fails=1 fail_timeout=5s;\n" for member in members
    )
    text, replaced = UPSTREAM_SERVERS.subn(lines, text, count=1)
    assert replaced == 1, "deploy/nginx.conf lost its upstream server lines"
    text, replaced = re.subn(r"listen 8080;", f"listen {LOOPBACK}:{port};", text)
    assert replaced == 1, "deploy/nginx.conf lost its listen line"
    return text


@dataclass
class Nginx:
    """One nginx master (and its workers) in `prefix`, stopped by pid."""

    prefix: Path
    members: list[int]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        self.port = free_port()
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        config = self.prefix / "nginx.conf"
        config.write_text(configured(self.members, self.port))
        # In the foreground, so the test owns the master's pid. As root, workers run
        # as root too: the pytest directories are private to root.
        directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        command = ["nginx", "-p", str(self.prefix), "-c", str(config), "-g", directives]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        wait_until(self._answering, 30, 0.05)
        return self

    def _answering(self) -> bool:
        import socket

        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: the master stops its workers
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
