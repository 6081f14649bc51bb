"""Startup check that the data directory is private to the node's user.

Storage creates a missing directory 0700 and its files 0600, but leaves an
existing directory's mode alone (`-d .` must not chmod the working directory),
so an operator who made it 0755 beforehand gets a warning instead.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

log = logging.getLogger(__name__)

GROUP_OR_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def warn_if_data_dir_exposed(data_dir: Path) -> bool:
    """Log a warning when group or others have any access; True when warned."""
    try:
        mode = stat.S_IMODE(data_dir.stat().st_mode)
    except OSError:
        return False  # storage creates it (0700) or reports the real problem
    if not mode & GROUP_OR_OTHERS:
        return False
    log.warning(
        "data directory %s has mode %04o: group or other users have access to it; "
        "run chmod 700 on it",
        data_dir,
        mode,
    )
    return True
