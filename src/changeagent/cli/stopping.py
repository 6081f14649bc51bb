"""Stopping a client command (`tail -f`, `mirror`) on SIGINT or SIGTERM.

The command's work runs on a thread of its own and the main thread takes the signals
with `sigtimedwait`. A Python signal handler runs in the main thread between two
bytecodes, so one raising an exception there (as these commands once did) missed a
signal that arrived just before the thread blocked in a socket's `poll()`: `tail -f`
exited only when its 30 s long poll did (CI saw it once). An exception raised into
library code at an arbitrary bytecode can also leave a lock of that library held.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
SIGNAL_POLL_S = 0.1  # how often the main thread looks whether the work has ended


def run_until_stopped(work: Callable[[], None], section: threading.Lock) -> bool:
    """Run `work()` on a daemon thread until it returns (False) or SIGINT or SIGTERM
    arrives (True). Then `section` is held: the part of the work under it finished
    and no other starts; the rest of the work (a request in flight) is abandoned, and
    the signals stay blocked while the process exits. An exception of `work` is
    raised here."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # raised again on the main thread
            failures.append(error)

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    worker = threading.Thread(target=run, name="changeagent-work", daemon=True)
    worker.start()  # it inherits the mask: the signals wait for `sigtimedwait` below
    while worker.is_alive():
        if signal.sigtimedwait(STOP_SIGNALS, SIGNAL_POLL_S) is not None:
            section.acquire()
            return True
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if failures:
        raise failures[0]
    return False
