"""The archive of purged history: what every purge removes, kept in files.

With the replicated setting `archiveDir`, each member writes, before it applies a
purge to its own log, the changes that purge removes to gzip segment files in that
directory (on its own file system), and makes them durable; only then does it
compact. The node side is `changeagent.node.archiver`; this package is the
directory format, its writer (`ArchiveWriter`, crash-safe and idempotent) and its
reader (`changeagent archive ls|cat`).

The directory:

    manifest.jsonl                   closed segments, one JSON object per line, in order
    changes-<first>-<last>.jsonl.gz  a closed segment: never changes again
    open.json                        the open segment's record (absent when none)
    open-<first>.jsonl.gz            the open segment: grows by appends, then is closed
    LOCK                             held (flock) by the node that writes here

A segment holds changes in `_id` order, one per line, exactly the bytes the node
stored (the JSON GET /changes shows); it is a series of gzip members, one per
append, which `gzip` and `zcat` read as one stream. A segment's record gives its
file, first and last `_id`, count, size and the SHA-256 of its file, plus the
SHA-256 of its last change's bytes (`lastDigest`: how a restarted writer checks
that the log it continues is the one it archived). Ids are zero-padded to 20
digits in file names, so names sort in id order.
"""

from changeagent.archive.format import (
    ArchiveCorrupt,
    ArchiveError,
    ArchiveInUse,
    Segment,
)
from changeagent.archive.reader import ArchiveListing, read_changes, read_listing, verify_segment
from changeagent.archive.writer import ArchiveWriter

__all__ = [
    "ArchiveCorrupt",
    "ArchiveError",
    "ArchiveInUse",
    "ArchiveListing",
    "ArchiveWriter",
    "Segment",
    "read_changes",
    "read_listing",
    "verify_segment",
]
