"""Install the peer systems and wrk from Debian packages when they are missing.

`apt-get update` runs at most once per bench run, then `apt-get install -y` of the
missing packages. When that is impossible (not root, no apt, no network) the peers are
reported missing with the reason and their scenarios are skipped, never faked.
"""

from __future__ import annotations

import os
import shutil
import subprocess

PACKAGES = {"etcd": ("etcd", "etcd-server"), "redis": ("redis-server", "redis-server"),
            "wrk": ("wrk", "wrk"), "nginx": ("nginx", "nginx")}


def ensure_installed(names: list[str], log: object = print) -> dict[str, str]:
    """Install what `names` need; return {name: reason} for those still missing."""
    missing = [n for n in names if n in PACKAGES and shutil.which(PACKAGES[n][0]) is None]
    if not missing:
        return {}
    packages = sorted({PACKAGES[n][1] for n in missing})
    reason = _install(packages, log)
    still = {n: reason or "not found after install"
             for n in missing if shutil.which(PACKAGES[n][0]) is None}
    return still


def _install(packages: list[str], log: object) -> str | None:
    if shutil.which("apt-get") is None:
        return "apt-get not available"
    if os.geteuid() != 0:
        return "not root: run `apt-get install -y " + " ".join(packages) + "` first"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if callable(log):
        log(f"installing {' '.join(packages)} with apt-get (once)")
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *packages]):
        try:
            result = subprocess.run(argv, capture_output=True, timeout=600, env=env)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{' '.join(argv[:2])} failed: {error}"
        if result.returncode != 0:
            tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
            return f"{' '.join(argv[:2])} exited {result.returncode}: {' '.join(tail)}"
    return None
