"""The version of the installed package, as `--version`, `GET /version`,
`/diagnostics` and the OpenAPI document report it."""

from __future__ import annotations

from functools import cache
from importlib import metadata

from changeagent import __version__


@cache
def package_version() -> str:
    """The installed distribution's version (what pip installed); the source
    tree's `__version__` when it runs without being installed."""
    try:
        return metadata.version("changeagent")
    except metadata.PackageNotFoundError:
        return __version__
