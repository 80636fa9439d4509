"""Audit log of call placement: who asked the switch to place which call.

An originate API is as powerful as a shell with a phone line: when a call is placed or
refused on request (the HTTP API, a vendor front-end, the scheduler, an embedding program),
one JSON line goes to the logger ``switch.audit`` with who asked for it (API key name and
tenant, client IP for HTTP, front-end name, scheduled job id), what was asked (destination,
second stage, caller ID) and the answer (``accepted`` with the call id, or ``denied`` with the
reason). Route that logger to its own file or to syslog with the standard ``logging`` setup.

The entries are also kept in memory (the last ``keep``) and handed to ``sinks``; the switch's
sink journals each entry at once and commits it to the store's ``audit`` table with the next
batch (``GET /v1/audit`` lists a tenant's entries).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["AuditLog", "audit_logger"]

#: The logger the audit lines go to (INFO; one JSON object per line).
audit_logger = logging.getLogger("switch.audit")


class AuditLog:
    """Writes audit entries as JSON lines to ``switch.audit`` and keeps the recent ones."""

    def __init__(self, *, keep: int = 1000, clock: Callable[[], float] = time.time) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self.sinks: list[Callable[[dict[str, Any]], object]] = []
        self._clock = clock

    def record(self, action: str, **fields: Any) -> dict[str, Any]:
        """Log one entry ``{"id", "time", "action", **fields}`` (None values left out); return
        it. Never raises: an audit sink failing must not fail the call it describes."""
        entry: dict[str, Any] = {"id": uuid.uuid4().hex, "time": round(self._clock(), 6),
                                 "action": action}
        entry.update({k: v for k, v in fields.items() if v is not None})
        try:
            line = json.dumps(entry, sort_keys=True, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            line = json.dumps({"time": entry["time"], "action": action,
                               "error": "unserialisable audit fields"})
        audit_logger.info("%s", line)
        self.recent.append(entry)
        for sink in list(self.sinks):
            try:
                sink(entry)
            except Exception:
                audit_logger.exception("audit sink failed")
        return entry
