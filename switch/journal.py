"""A write-ahead journal for records on their way to the store: CDRs, webhook events, audit.

The switch writes CDRs (and the webhook events and audit entries) to the store in batches, a
fraction of a second after the call ends, because one commit per call costs more CPU than the
call itself at a few hundred calls per second. A process killed with ``kill -9`` in that
fraction of a second would lose what it had not committed yet. So every such record is first
appended to this journal with one ``write(2)`` on an ``O_APPEND`` descriptor (a few
microseconds, no ``fsync``): what has been written belongs to the kernel, so it survives the
death of the process (not a power cut: the store's own commits are the durable ones).

When the records of a batch are committed, they are marked :meth:`done`; when nothing is left
open the file is truncated, and when it grows past ``compact_bytes`` under sustained load it is
rewritten with only the open records (a new file renamed over the old one, so a crash at any
point leaves either file whole). At the next start, :meth:`recover` returns what was never
marked done; the switch writes it again (the store and the outbox skip what they already have,
so a record written twice is harmless).

The format is one JSON object per line, ``{"k": kind, "r": record}``. A torn last line (the
process died in the middle of a ``write``, or the disk filled) is skipped and counted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["Journal"]

log = logging.getLogger(__name__)


class Journal:
    """Append-only JSON-lines journal of records not yet committed to the store.

    ``path`` ``None`` makes a journal that only counts (for an in-memory store, where a crash
    loses everything anyway).
    """

    def __init__(self, path: str | Path | None, *, compact_bytes: int = 16 * 1024 * 1024) -> None:
        self.path = None if path is None else Path(path)
        self.compact_bytes = compact_bytes
        self._fd: int | None = None
        self._open: dict[int, bytes] = {}
        self._next = 0
        self._size = 0
        self.counters = {"appended": 0, "recovered": 0, "torn": 0, "compactions": 0,
                         "write_errors": 0}
        #: When the file recovered was last written (about when an earlier run died), or None.
        self.recovered_mtime: float | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def recover(self) -> list[tuple[str, dict[str, Any]]]:
        """Open the journal; return the ``(kind, record)`` entries a previous run left open.

        They stay in the file until the caller has stored them again and calls
        :meth:`forget_recovered`.
        """
        if self.path is None:
            return []
        entries: list[tuple[str, dict[str, Any]]] = []
        try:
            raw = self.path.read_bytes()
            self.recovered_mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            raw = b""
        for line in raw.split(b"\n"):
            if not line:
                continue
            try:
                item = json.loads(line)
                kind, record = item["k"], item["r"]
                if not isinstance(kind, str) or not isinstance(record, dict):
                    raise ValueError("bad entry")
            except (ValueError, KeyError, TypeError):
                self.counters["torn"] += 1
                continue
            entries.append((kind, record))
        self.counters["recovered"] += len(entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        if entries:
            log.warning("journal %s: %d record(s) from an earlier run were not in the store; "
                        "writing them now", self.path, len(entries))
        return entries

    def forget_recovered(self) -> None:
        """The recovered entries are stored: drop them (and anything else not open)."""
        self._rewrite()

    def close(self) -> None:
        """Close the file (records still open stay in it for the next :meth:`recover`)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ---- records ---------------------------------------------------------------------------

    def append(self, kind: str, record: dict[str, Any]) -> int:
        """Write one record; return the token to pass to :meth:`done` once it is stored.

        Never raises: a record that cannot be serialised or written is counted and logged,
        and the caller still stores it (it is only unprotected against a crash)."""
        token = self._next
        self._next += 1
        self.counters["appended"] += 1
        if self._fd is None:
            return token
        try:
            line = json.dumps({"k": kind, "r": record}, separators=(",", ":"),
                              default=str, ensure_ascii=False).encode() + b"\n"
            os.write(self._fd, line)
        except (OSError, TypeError, ValueError) as exc:
            self.counters["write_errors"] += 1
            log.error("journal %s: cannot write a %s record: %s", self.path, kind, exc)
            return token
        self._open[token] = line
        self._size += len(line)
        return token

    def done(self, tokens: Iterable[int]) -> None:
        """These records are committed to the store."""
        for token in tokens:
            self._open.pop(token, None)
        if self._fd is None:
            return
        if not self._open:
            if self._size:
                self._truncate()
        elif self._size > self.compact_bytes:
            self._rewrite()

    @property
    def open_records(self) -> int:
        """Records appended and not yet marked done."""
        return len(self._open)

    # ---- file maintenance ------------------------------------------------------------------

    def _truncate(self) -> None:
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, 0)
            self._size = 0
        except OSError as exc:
            self.counters["write_errors"] += 1
            log.error("journal %s: cannot truncate: %s", self.path, exc)

    def _rewrite(self) -> None:
        """Replace the file with the open records only (atomic rename)."""
        if self._fd is None or self.path is None:
            return
        if not self._open:
            self._truncate()
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(self._open.values())
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
        except OSError as exc:
            self.counters["write_errors"] += 1
            log.error("journal %s: cannot compact: %s", self.path, exc)
            return
        os.close(self._fd)
        self._fd = fd
        self._size = len(data)
        self.counters["compactions"] += 1
