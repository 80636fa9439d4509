"""Persistent store: CDRs, recording metadata, scheduled calls and the webhook outbox.

Built on SQLAlchemy Core with an async driver. A SQLite file is the default (WAL journal,
``synchronous=FULL`` so that a committed schedule or outbox row survives a power cut);
PostgreSQL works by URL (``postgresql+asyncpg://...``, asyncpg being an optional extra).
Only portable Core constructs are used, and JSON is kept in TEXT columns that this module
encodes and decodes itself, so both back ends behave the same.

The schema is versioned: :data:`MIGRATIONS` is an ordered list of steps and
:meth:`Store.start` applies the ones a database has not seen yet, each in its own
transaction together with its ``schema_version`` row.

Typical use::

    store = Store("/var/lib/softswitch/softswitch.db")
    await store.start()
    await store.add_cdr({"call_id": "abc", "started_at": time.time(), ...})
    await store.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

__all__ = [
    "LATEST_SCHEMA_VERSION",
    "MIGRATIONS",
    "Migration",
    "OutboxItem",
    "Store",
    "StoreError",
]

logger = logging.getLogger(__name__)


class StoreError(Exception):
    """The store cannot be opened, migrated or used (bad URL, I/O or database error)."""


@dataclass(slots=True)
class OutboxItem:
    """One durable webhook delivery: a single event to a single target URL.

    ``max_attempts`` is snapshotted at enqueue time so that an item left in the outbox by a
    previous run keeps its retry budget even when its target is no longer configured.
    """

    id: str  # unique per delivery (e.g. f"{event_id}:{target}")
    event_id: str  # stable across retries, sent as a header
    target: str  # webhook target name, or "" for an ad-hoc URL
    url: str
    body: bytes  # the exact JSON bytes to POST (signatures are computed over these)
    headers: dict[str, str]  # extra headers to send
    created_at: float
    next_at: float
    attempts: int = 0
    state: str = "pending"  # pending | delivered | dead
    last_error: str | None = None
    delivered_at: float | None = None
    max_attempts: int = 10


# --------------------------------------------------------------------------- JSON helpers


def _dumps(value: Any) -> str:
    """Compact, strict JSON (NaN/Infinity refused: other consumers could not parse them)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _loads(text: str | None, default: Any) -> Any:
    if text is None or text == "":
        return default
    return json.loads(text)


# --------------------------------------------------------------------------- schema (latest)

_metadata = sa.MetaData()

_schema_version = sa.Table(
    "schema_version",
    _metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied_at", sa.Double, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
)

_cdrs = sa.Table(
    "cdrs",
    _metadata,
    sa.Column("call_id", sa.Text, primary_key=True),
    sa.Column("tenant", sa.Text),
    sa.Column("caller", sa.Text),
    sa.Column("callee", sa.Text),
    sa.Column("caller_id_number", sa.Text),
    sa.Column("caller_id_name", sa.Text),
    sa.Column("started_at", sa.Double),
    sa.Column("answered_at", sa.Double),
    sa.Column("ended_at", sa.Double),
    sa.Column("duration", sa.Double),
    sa.Column("billsec", sa.Double),
    sa.Column("outcome", sa.Text),
    sa.Column("sip_status", sa.Integer),
    sa.Column("q850", sa.Integer),
    sa.Column("legs", sa.Text),
    sa.Column("recording_ids", sa.Text),
    sa.Column("frontend", sa.Text),
    sa.Column("external_id", sa.Text),
    sa.Column("variables", sa.Text),
    sa.Column("extra", sa.Text),  # v2
)

_recordings = sa.Table(
    "recordings",
    _metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("call_id", sa.Text),
    sa.Column("path", sa.Text),
    sa.Column("started_at", sa.Double),
    sa.Column("duration", sa.Double),
    sa.Column("channels", sa.Integer),
    sa.Column("sample_rate", sa.Integer),
    sa.Column("legs", sa.Text),
    sa.Column("created_at", sa.Double),
    sa.Column("extra", sa.Text),  # v2
)

_schedule = sa.Table(
    "schedule",
    _metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("due_at", sa.Double, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)

_outbox = sa.Table(
    "outbox",
    _metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("headers", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("next_at", sa.Double, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("delivered_at", sa.Double),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="10"),  # v2
)

_audit = sa.Table(
    "audit",
    _metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("tenant", sa.Text),
    sa.Column("entry", sa.Text, nullable=False),
)

# The column sets that the CDR / recording dicts map onto; anything else goes to "extra".
_CDR_SCALARS: Final = (
    "call_id", "tenant", "caller", "callee", "caller_id_number", "caller_id_name",
    "started_at", "answered_at", "ended_at", "duration", "billsec", "outcome",
    "sip_status", "q850", "frontend", "external_id",
)
_CDR_JSON: Final[Mapping[str, Callable[[], Any]]] = {
    "legs": list, "recording_ids": list, "variables": dict,
}
_REC_SCALARS: Final = (
    "id", "call_id", "path", "started_at", "duration", "channels", "sample_rate", "created_at",
)
_REC_JSON: Final[Mapping[str, Callable[[], Any]]] = {"legs": list}


# --------------------------------------------------------------------------- migrations


def _v1_create_tables(conn: Connection) -> None:
    # The v1 tables are spelled out here rather than taken from the current model: a
    # migration step must keep producing the schema it produced when it was written.
    md = sa.MetaData()
    sa.Table(
        "cdrs", md,
        sa.Column("call_id", sa.Text, primary_key=True),
        *(sa.Column(name, sa.Text) for name in (
            "tenant", "caller", "callee", "caller_id_number", "caller_id_name")),
        *(sa.Column(name, sa.Double) for name in (
            "started_at", "answered_at", "ended_at", "duration", "billsec")),
        sa.Column("outcome", sa.Text),
        sa.Column("sip_status", sa.Integer),
        sa.Column("q850", sa.Integer),
        sa.Column("legs", sa.Text),
        sa.Column("recording_ids", sa.Text),
        sa.Column("frontend", sa.Text),
        sa.Column("external_id", sa.Text),
        sa.Column("variables", sa.Text),
    )
    sa.Table(
        "recordings", md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("call_id", sa.Text),
        sa.Column("path", sa.Text),
        sa.Column("started_at", sa.Double),
        sa.Column("duration", sa.Double),
        sa.Column("channels", sa.Integer),
        sa.Column("sample_rate", sa.Integer),
        sa.Column("legs", sa.Text),
        sa.Column("created_at", sa.Double),
    )
    sa.Table(
        "schedule", md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("due_at", sa.Double, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )
    sa.Table(
        "outbox", md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("next_at", sa.Double, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", sa.Double),
    )
    md.create_all(conn)


def _v2_extra_columns(conn: Connection) -> None:
    # Plain ALTER TABLE ... ADD COLUMN is understood identically by SQLite and PostgreSQL.
    conn.exec_driver_sql("ALTER TABLE cdrs ADD COLUMN extra TEXT")
    conn.exec_driver_sql("ALTER TABLE recordings ADD COLUMN extra TEXT")
    conn.exec_driver_sql(
        "ALTER TABLE outbox ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 10")


def _v3_indexes(conn: Connection) -> None:
    md = sa.MetaData()
    cdrs = sa.Table(
        "cdrs", md, sa.Column("started_at"), sa.Column("tenant"), sa.Column("frontend"),
        sa.Column("external_id"))
    recordings = sa.Table("recordings", md, sa.Column("call_id"), sa.Column("created_at"))
    schedule = sa.Table("schedule", md, sa.Column("state"), sa.Column("due_at"))
    outbox = sa.Table("outbox", md, sa.Column("state"), sa.Column("next_at"))
    for index in (
        sa.Index("ix_cdrs_started_at", cdrs.c.started_at),
        sa.Index("ix_cdrs_tenant_started_at", cdrs.c.tenant, cdrs.c.started_at),
        sa.Index("ix_cdrs_frontend_external_id", cdrs.c.frontend, cdrs.c.external_id),
        sa.Index("ix_recordings_call_id", recordings.c.call_id, recordings.c.created_at),
        sa.Index("ix_schedule_state_due_at", schedule.c.state, schedule.c.due_at),
        sa.Index("ix_outbox_state_next_at", outbox.c.state, outbox.c.next_at),
    ):
        index.create(conn)


def _v4_audit(conn: Connection) -> None:
    md = sa.MetaData()
    audit = sa.Table(
        "audit", md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text),
        sa.Column("entry", sa.Text, nullable=False),
    )
    md.create_all(conn)
    sa.Index("ix_audit_tenant_time", audit.c.tenant, audit.c.time).create(conn)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: ``apply`` runs on a sync connection inside the step's transaction."""

    version: int
    description: str
    apply: Callable[[Connection], None] = field(repr=False)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "create cdrs, recordings, schedule and outbox tables", _v1_create_tables),
    Migration(2, "extra JSON columns; outbox.max_attempts", _v2_extra_columns),
    Migration(3, "indexes for listing and polling", _v3_indexes),
    Migration(4, "audit table", _v4_audit),
)
LATEST_SCHEMA_VERSION: Final = MIGRATIONS[-1].version

# --------------------------------------------------------------------------- URL handling

_WRITE_OPTION: Final = "softswitch_write"
_NO_BEGIN_OPTION: Final = "softswitch_no_begin"
_BUSY_TIMEOUT_MS: Final = 30_000
# A bound larger than any due time, for "what is the earliest pending item" style queries.
_FAR_FUTURE: Final = 1e300


@dataclass(frozen=True, slots=True)
class _Target:
    url: URL
    sqlite: bool
    memory: bool
    parent_dir: Path | None  # created before connecting


def _resolve_url(raw: str) -> _Target:
    """Turn the user's ``url`` (SQLAlchemy URL, bare path or ``:memory:``) into an async URL."""
    text = raw.strip()
    if not text:
        raise StoreError("store URL is empty")
    if text == ":memory:":
        return _Target(URL.create("sqlite+aiosqlite", database=":memory:"), True, True, None)
    if "://" not in text:
        path = Path(text).expanduser()
        return _Target(URL.create("sqlite+aiosqlite", database=str(path)), True, False,
                       path.parent)
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"invalid store URL {text!r}: {exc}") from exc
    backend = url.get_backend_name()
    # Plain "sqlite://" / "postgresql://" URLs (as in the example config) get the async
    # driver this module is written for; an explicit driver is left alone.
    if url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    elif url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        database = url.database or ""
        memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
        parent = None
        if not memory and not database.startswith("file:"):
            parent = Path(database).expanduser().parent
        return _Target(url, True, memory, parent)
    return _Target(url, False, False, None)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Turn off the driver's own implicit BEGIN so that the "begin" hook below decides
    # (BEGIN IMMEDIATE for writers) and DDL stays inside our transactions.
    dbapi_conn.isolation_level = None
    # journal_mode=WAL is not set here: it is a property of the file, set once by
    # Store._enable_wal, and switching it can fail at once with "database is locked"
    # (no busy wait) while another connection is opening the same file.
    try:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            # FULL: a commit is on disk before it returns, so an acknowledged schedule
            # or outbox write is never lost to a crash.
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()
    except BaseException:
        # The pool does not close a connection whose connect hook failed.
        dbapi_conn.close()
        raise


def _sqlite_on_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get(_NO_BEGIN_OPTION):
        return  # autocommit statements (PRAGMAs that refuse to run in a transaction)
    # A deferred transaction that reads and then writes can fail with SQLITE_BUSY at once
    # (no busy wait) if another connection wrote in between; taking the write lock up front
    # makes writers queue on busy_timeout instead.
    if options.get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


# --------------------------------------------------------------------------- the store


class Store:
    """Async persistent store. Call :meth:`start` before use and :meth:`close` at the end.

    ``url`` is a SQLAlchemy async URL (``sqlite+aiosqlite:///path/x.db``,
    ``postgresql+asyncpg://user:pw@host/db``), a plain filesystem path (a SQLite file whose
    parent directory is created) or ``":memory:"``. ``sqlite://`` and ``postgresql://``
    URLs get the async driver automatically.
    """

    def __init__(self, url: str) -> None:
        self._raw_url = url
        self._engine: AsyncEngine | None = None
        self._write_engine: AsyncEngine | None = None
        self._sqlite = False
        self._memory = False
        self._schema_version = 0
        # In-process writers queue here rather than in SQLite's busy handler, which would
        # block a driver thread and a pooled connection each while waiting.
        self._write_lock: AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        self._read_lock: AbstractAsyncContextManager[Any] = contextlib.nullcontext()

    # ------------------------------------------------------------------ lifecycle

    @property
    def schema_version(self) -> int:
        """The schema version of the open database (0 before :meth:`start`)."""
        return self._schema_version

    @property
    def dialect(self) -> str:
        """The database back end name ("sqlite", "postgresql"), or "" before :meth:`start`."""
        return self._engine.dialect.name if self._engine is not None else ""

    async def start(self) -> None:
        """Open the database, set per-connection SQLite pragmas and apply pending migrations.

        Raises :class:`StoreError` on a bad URL, a missing driver, an unreachable database
        or a database whose schema is newer than this code.
        """
        await self._migrate()

    async def close(self) -> None:
        """Close all pooled connections. The store can be started again afterwards."""
        engine, self._engine, self._write_engine = self._engine, None, None
        self._schema_version = 0
        if engine is not None:
            await engine.dispose()

    async def ping(self) -> bool:
        """True when a trivial query succeeds (for health checks); never raises."""
        if self._engine is None:
            return False
        try:
            async with self._tx() as conn:
                return (await conn.scalar(sa.select(sa.literal(1)))) == 1
        except Exception:
            logger.debug("store ping failed", exc_info=True)
            return False

    async def _open(self) -> None:
        if self._engine is not None:
            return
        target = _resolve_url(self._raw_url)
        safe = target.url.render_as_string(hide_password=True)
        kwargs: dict[str, Any] = {}
        if target.memory:
            # Every connection to ":memory:" is a new empty database: share one.
            kwargs["poolclass"] = StaticPool
        elif not target.sqlite:
            kwargs["pool_pre_ping"] = True
        database = target.url.database or ""
        if target.sqlite and not target.memory and Path(database).is_dir():
            raise StoreError(f"cannot open store {safe}: {database} is a directory")
        try:
            if target.parent_dir is not None:
                target.parent_dir.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(target.url, **kwargs)
        except Exception as exc:
            # NoSuchModuleError (unknown dialect), ImportError (driver not installed),
            # InvalidRequestError (a sync-only driver) and OSError all land here.
            raise StoreError(f"cannot use store URL {safe}: {exc}") from exc
        if target.sqlite:
            sa.event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
            sa.event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        self._engine = engine
        self._write_engine = engine.execution_options(**{_WRITE_OPTION: True})
        self._sqlite = target.sqlite
        self._memory = target.memory
        if target.sqlite:
            lock: AbstractAsyncContextManager[Any] = asyncio.Lock()
            self._write_lock = lock
            # The single shared :memory: connection cannot run two transactions at once.
            self._read_lock = lock if target.memory else contextlib.nullcontext()
        try:
            async with engine.connect() as conn:
                await conn.scalar(sa.select(sa.literal(1)))
            if target.sqlite and not target.memory:
                await self._enable_wal(engine)
        except Exception as exc:
            await self.close()
            if target.sqlite:
                # aiosqlite stops its worker thread asynchronously after a failed connect
                # and that thread calls back into this loop: give it a moment to do so.
                await asyncio.sleep(0.05)
            raise StoreError(f"cannot open store {safe}: {exc}") from exc

    @staticmethod
    async def _enable_wal(engine: AsyncEngine) -> None:
        """Switch the SQLite file to WAL (persistent), waiting out concurrent openers."""
        async with engine.connect() as conn:
            await conn.execution_options(**{_NO_BEGIN_OPTION: True})
            for _ in range(200):
                try:
                    mode = await conn.scalar(sa.text("PRAGMA journal_mode=WAL"))
                except OperationalError:
                    # "database is locked": SQLite does not apply busy_timeout here.
                    await conn.rollback()
                    await asyncio.sleep(0.05)
                    continue
                await conn.commit()
                if str(mode).lower() != "wal":
                    logger.warning("SQLite refused WAL journal mode (using %s)", mode)
                return
            raise StoreError("database stayed locked while enabling WAL journal mode")

    async def _migrate(self, upto: int | None = None) -> int:
        """Open the database if needed and apply migrations up to ``upto`` (default: all).

        Returns the resulting schema version. Exposed (privately) so that tests can build an
        old-schema database and check that a later :meth:`start` upgrades it in place.
        """
        target = LATEST_SCHEMA_VERSION if upto is None else upto
        if not 0 <= target <= LATEST_SCHEMA_VERSION:
            raise ValueError(f"schema version must be 0..{LATEST_SCHEMA_VERSION}, not {target}")
        await self._open()
        try:
            async with self._tx(write=True) as conn:
                await conn.run_sync(lambda c: _schema_version.create(c, checkfirst=True))
            current = await self._read_version()
            if current > LATEST_SCHEMA_VERSION:
                raise StoreError(
                    f"database schema version {current} is newer than this software "
                    f"supports ({LATEST_SCHEMA_VERSION}); upgrade the softswitch")
            for step in MIGRATIONS:
                if step.version <= current or step.version > target:
                    continue
                async with self._tx(write=True) as conn:
                    if self.dialect == "postgresql":
                        # Serialise concurrent starters; SQLite already has BEGIN IMMEDIATE.
                        await conn.exec_driver_sql(
                            "LOCK TABLE schema_version IN EXCLUSIVE MODE")
                    # Re-read under the lock: another process may have just applied it.
                    done = await conn.scalar(sa.select(sa.func.max(_schema_version.c.version)))
                    if done is not None and done >= step.version:
                        continue
                    await conn.run_sync(step.apply)
                    await conn.execute(sa.insert(_schema_version).values(
                        version=step.version, applied_at=time.time(),
                        description=step.description))
                logger.info("store schema migrated to v%d: %s", step.version, step.description)
            self._schema_version = await self._read_version()
        except StoreError:
            await self.close()
            raise
        return self._schema_version

    async def _read_version(self) -> int:
        async with self._tx() as conn:
            value = await conn.scalar(sa.select(sa.func.max(_schema_version.c.version)))
        return int(value or 0)

    @contextlib.asynccontextmanager
    async def _tx(self, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
        """One transaction, committed on normal exit; database errors become StoreError."""
        engine = self._write_engine if write else self._engine
        if engine is None:
            raise StoreError("store is not started")
        try:
            async with self._write_lock if write else self._read_lock:
                async with engine.begin() as conn:
                    yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"store {'write' if write else 'read'} failed: {exc}") from exc

    async def _upsert(self, table: sa.Table, key: str, insert_values: dict[str, Any],
                      update_values: dict[str, Any]) -> None:
        """UPDATE, or INSERT when no row matched, in one write transaction.

        Portable across dialects (no ON CONFLICT); on PostgreSQL a concurrent insert of the
        same key loses the race with IntegrityError, so the whole step is tried again.
        """
        pk = next(iter(table.primary_key.columns))
        for attempt in range(3):
            try:
                async with self._tx(write=True) as conn:
                    result = await conn.execute(
                        sa.update(table).where(pk == key).values(**update_values))
                    if result.rowcount == 0:
                        await conn.execute(sa.insert(table).values(**insert_values))
                return
            except StoreError as exc:
                if not isinstance(exc.__cause__, IntegrityError) or attempt == 2:
                    raise

    # ------------------------------------------------------------------ CDRs

    async def add_cdr(self, cdr: dict[str, Any]) -> None:
        """Insert or replace the call detail record ``cdr["call_id"]``.

        Known keys map to columns; ``legs``, ``recording_ids`` and ``variables`` are stored
        as JSON; any other key is kept in the ``extra`` JSON column and comes back merged.
        A second call with the same ``call_id`` replaces the whole record.
        """
        values = self._cdr_values(cdr)
        update = {k: v for k, v in values.items() if k != "call_id"}
        await self._upsert(_cdrs, values["call_id"], values, update)

    async def add_cdrs(self, cdrs: Sequence[dict[str, Any]]) -> None:
        """:meth:`add_cdr` for several records in one write transaction (one commit, so one
        disk sync, for a whole batch of ended calls)."""
        rows = [self._cdr_values(cdr) for cdr in cdrs]
        if not rows:
            return
        pk = _cdrs.c.call_id
        for attempt in range(3):
            try:
                async with self._tx(write=True) as conn:
                    # Almost every row is new: one SELECT finds the few that are not, one
                    # executemany INSERT writes the rest (per-row statements cost more CPU
                    # than the commit at a few hundred calls per second).
                    keys = [values["call_id"] for values in rows]
                    existing = set((await conn.execute(
                        sa.select(pk).where(pk.in_(keys)))).scalars())
                    fresh: dict[str, dict[str, Any]] = {}
                    for values in rows:
                        if values["call_id"] in existing:
                            update = {k: v for k, v in values.items() if k != "call_id"}
                            await conn.execute(
                                sa.update(_cdrs).where(pk == values["call_id"]).values(**update))
                        else:
                            fresh[values["call_id"]] = values  # the last of duplicates wins
                    if fresh:
                        await conn.execute(sa.insert(_cdrs), list(fresh.values()))
                return
            except StoreError as exc:
                if not isinstance(exc.__cause__, IntegrityError) or attempt == 2:
                    raise

    @staticmethod
    def _cdr_values(cdr: dict[str, Any]) -> dict[str, Any]:
        call_id = cdr.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ValueError("cdr needs a non-empty string 'call_id'")
        values: dict[str, Any] = {name: cdr.get(name) for name in _CDR_SCALARS}
        for name, default in _CDR_JSON.items():
            value = cdr.get(name)
            values[name] = _dumps(default() if value is None else value)
        extra = {k: v for k, v in cdr.items() if k not in values}
        values["extra"] = _dumps(extra) if extra else None
        return values

    async def get_cdr(self, call_id: str) -> dict[str, Any] | None:
        """The CDR stored for ``call_id``, or None."""
        async with self._tx() as conn:
            row = (await conn.execute(
                sa.select(_cdrs).where(_cdrs.c.call_id == call_id))).mappings().first()
        return None if row is None else _cdr_from_row(row)

    async def list_cdrs(self, *, limit: int = 100, offset: int = 0, since: float | None = None,
                        until: float | None = None, tenant: str | None = None,
                        frontend: str | None = None, external_id: str | None = None,
                        outcome: str | None = None) -> list[dict[str, Any]]:
        """CDRs newest first by ``started_at``; ``since <= started_at < until``; all filters
        combine with AND."""
        if limit <= 0:
            return []
        if offset < 0:
            raise ValueError("offset must be >= 0")
        query = sa.select(_cdrs)
        if since is not None:
            query = query.where(_cdrs.c.started_at >= since)
        if until is not None:
            query = query.where(_cdrs.c.started_at < until)
        for column, value in ((_cdrs.c.tenant, tenant), (_cdrs.c.frontend, frontend),
                              (_cdrs.c.external_id, external_id), (_cdrs.c.outcome, outcome)):
            if value is not None:
                query = query.where(column == value)
        # nulls_last: SQLite and PostgreSQL disagree on where NULLs sort by default.
        query = query.order_by(_cdrs.c.started_at.desc().nulls_last(), _cdrs.c.call_id.desc())
        query = query.limit(limit).offset(offset)
        async with self._tx() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_cdr_from_row(row) for row in rows]

    # ------------------------------------------------------------------ recordings

    async def add_recording(self, rec: dict[str, Any]) -> None:
        """Insert or replace recording metadata ``rec["id"]`` (``created_at`` defaults to now).

        Keys other than the documented ones are kept in an ``extra`` JSON column.
        """
        rec_id = rec.get("id")
        if not isinstance(rec_id, str) or not rec_id:
            raise ValueError("recording needs a non-empty string 'id'")
        values: dict[str, Any] = {name: rec.get(name) for name in _REC_SCALARS}
        if values["created_at"] is None:
            values["created_at"] = time.time()
        for name, default in _REC_JSON.items():
            value = rec.get(name)
            values[name] = _dumps(default() if value is None else value)
        extra = {k: v for k, v in rec.items() if k not in values}
        values["extra"] = _dumps(extra) if extra else None
        update = {k: v for k, v in values.items() if k != "id"}
        await self._upsert(_recordings, rec_id, values, update)

    async def get_recording(self, rec_id: str) -> dict[str, Any] | None:
        """Recording metadata by id, or None."""
        async with self._tx() as conn:
            row = (await conn.execute(
                sa.select(_recordings).where(_recordings.c.id == rec_id))).mappings().first()
        return None if row is None else _recording_from_row(row)

    async def list_recordings(self, *, call_id: str | None = None,
                              limit: int = 100) -> list[dict[str, Any]]:
        """Recordings newest first by ``created_at``, optionally of one call only."""
        if limit <= 0:
            return []
        query = sa.select(_recordings)
        if call_id is not None:
            query = query.where(_recordings.c.call_id == call_id)
        query = query.order_by(_recordings.c.created_at.desc().nulls_last(),
                               _recordings.c.id.desc()).limit(limit)
        async with self._tx() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_recording_from_row(row) for row in rows]

    # ------------------------------------------------------------------ audit log

    async def add_audit(self, entries: Sequence[dict[str, Any]]) -> None:
        """Store audit entries (:mod:`switch.audit`) in one transaction; each needs an ``id``
        and a ``time``; ids already stored are skipped (a replayed journal writes twice)."""
        rows = [{"id": str(e["id"]), "time": float(e["time"]), "action": str(e.get("action")),
                 "tenant": None if e.get("tenant") is None else str(e["tenant"]),
                 "entry": _dumps(e)} for e in entries]
        if not rows:
            return
        for attempt in range(3):
            try:
                async with self._tx(write=True) as conn:
                    ids = [row["id"] for row in rows]
                    existing = set((await conn.execute(
                        sa.select(_audit.c.id).where(_audit.c.id.in_(ids)))).scalars())
                    new = {row["id"]: row for row in rows if row["id"] not in existing}
                    if new:
                        await conn.execute(sa.insert(_audit), list(new.values()))
                return
            except StoreError as exc:
                if not isinstance(exc.__cause__, IntegrityError) or attempt == 2:
                    raise

    async def list_audit(self, *, tenant: str | None = None, since: float | None = None,
                         action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Audit entries newest first, optionally of one tenant, action, or after ``since``."""
        if limit <= 0:
            return []
        query = sa.select(_audit.c.entry)
        if tenant is not None:
            query = query.where(_audit.c.tenant == tenant)
        if since is not None:
            query = query.where(_audit.c.time >= since)
        if action is not None:
            query = query.where(_audit.c.action == action)
        query = query.order_by(_audit.c.time.desc(), _audit.c.id.desc()).limit(limit)
        async with self._tx() as conn:
            rows = (await conn.execute(query)).scalars().all()
        return [_loads(row, {}) for row in rows]

    # ------------------------------------------------------------------ scheduled calls

    async def schedule_put(self, job_id: str, *, state: str, due_at: float, attempt: int,
                           data: dict[str, Any]) -> None:
        """Insert or update a scheduled job; an update keeps ``created_at`` and sets
        ``updated_at``. Durable once this returns."""
        if not job_id:
            raise ValueError("job_id must be non-empty")
        _check_time(due_at, "due_at")
        now = time.time()
        update = {"state": state, "due_at": float(due_at), "attempt": int(attempt),
                  "data": _dumps(data), "updated_at": now}
        await self._upsert(_schedule, job_id, {"id": job_id, "created_at": now, **update},
                           update)

    async def schedule_get(self, job_id: str) -> dict[str, Any] | None:
        """``{"id","state","due_at","attempt","data","created_at","updated_at"}`` or None."""
        async with self._tx() as conn:
            row = (await conn.execute(
                sa.select(_schedule).where(_schedule.c.id == job_id))).mappings().first()
        return None if row is None else _schedule_from_row(row)

    async def schedule_list(self, *, states: Iterable[str] | None = None,
                            due_before: float | None = None,
                            limit: int = 1000) -> list[dict[str, Any]]:
        """Jobs ordered by ``due_at`` (then id); ``states`` filters by state,
        ``due_before`` keeps jobs with ``due_at <= due_before``."""
        if limit <= 0:
            return []
        query = sa.select(_schedule)
        if states is not None:
            wanted = list(states)
            if not wanted:
                return []
            query = query.where(_schedule.c.state.in_(wanted))
        if due_before is not None:
            query = query.where(_schedule.c.due_at <= due_before)
        query = query.order_by(_schedule.c.due_at, _schedule.c.id).limit(limit)
        async with self._tx() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_schedule_from_row(row) for row in rows]

    async def schedule_delete(self, job_id: str) -> bool:
        """Remove a job; True when it existed."""
        async with self._tx(write=True) as conn:
            result = await conn.execute(sa.delete(_schedule).where(_schedule.c.id == job_id))
        return result.rowcount > 0

    # ------------------------------------------------------------------ webhook outbox

    async def outbox_add(self, item: OutboxItem) -> None:
        """Durably enqueue one delivery; adding an id that already exists is a no-op."""
        await self.outbox_add_many((item,))

    async def outbox_add_many(self, items: Sequence[OutboxItem]) -> None:
        """Enqueue several deliveries in one transaction (one fsync for an event fanned out
        to many targets); ids already present are skipped."""
        if not items:
            return
        rows = [_outbox_to_row(item) for item in items]
        ids = [row["id"] for row in rows]
        for attempt in range(3):
            try:
                async with self._tx(write=True) as conn:
                    existing = set((await conn.execute(
                        sa.select(_outbox.c.id).where(_outbox.c.id.in_(ids)))).scalars())
                    new = [row for row in rows if row["id"] not in existing]
                    if new:
                        await conn.execute(sa.insert(_outbox), new)
                return
            except StoreError as exc:
                # Only a concurrent insert of the same id (PostgreSQL) can get here.
                if not isinstance(exc.__cause__, IntegrityError) or attempt == 2:
                    raise

    async def outbox_due(self, now: float, limit: int = 50) -> list[OutboxItem]:
        """Pending deliveries with ``next_at <= now``, longest-waiting first."""
        if limit <= 0:
            return []
        query = (sa.select(_outbox)
                 .where(_outbox.c.state == "pending", _outbox.c.next_at <= now)
                 .order_by(_outbox.c.next_at, _outbox.c.created_at, _outbox.c.id)
                 .limit(limit))
        async with self._tx() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_outbox_from_row(row) for row in rows]

    async def outbox_next_due(self, *, exclude: Iterable[str] = ()) -> float | None:
        """The smallest ``next_at`` of a pending delivery whose id is not in ``exclude``
        (the dispatcher's in-flight set), or None when nothing is pending."""
        query = sa.select(sa.func.min(_outbox.c.next_at)).where(_outbox.c.state == "pending")
        skip = list(exclude)
        if skip:
            query = query.where(_outbox.c.id.not_in(skip))
        async with self._tx() as conn:
            value = await conn.scalar(query)
        return None if value is None else float(value)

    async def outbox_get(self, item_id: str) -> OutboxItem | None:
        """One delivery by id, or None."""
        async with self._tx() as conn:
            row = (await conn.execute(
                sa.select(_outbox).where(_outbox.c.id == item_id))).mappings().first()
        return None if row is None else _outbox_from_row(row)

    async def outbox_update(self, item: OutboxItem) -> None:
        """Persist ``state``, ``attempts``, ``next_at``, ``last_error`` and ``delivered_at``."""
        async with self._tx(write=True) as conn:
            result = await conn.execute(
                sa.update(_outbox).where(_outbox.c.id == item.id).values(
                    state=item.state, attempts=item.attempts, next_at=item.next_at,
                    last_error=item.last_error, delivered_at=item.delivered_at))
        if result.rowcount == 0:
            raise StoreError(f"outbox item {item.id!r} does not exist")

    async def outbox_counts(self) -> dict[str, int]:
        """Number of deliveries by state; pending, delivered and dead are always present."""
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        query = sa.select(_outbox.c.state, sa.func.count()).group_by(_outbox.c.state)
        async with self._tx() as conn:
            for row in (await conn.execute(query)).all():
                counts[str(row[0])] = int(row[1])
        return counts

    async def outbox_prune(self, before: float) -> int:
        """Delete delivered and dead rows created before ``before``; returns how many."""
        async with self._tx(write=True) as conn:
            result = await conn.execute(sa.delete(_outbox).where(
                _outbox.c.state.in_(("delivered", "dead")), _outbox.c.created_at < before))
        return int(result.rowcount)


# --------------------------------------------------------------------------- row mapping


def _check_time(value: float, name: str) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")


def _cdr_from_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(_loads(row["extra"], {}))
    for name in _CDR_SCALARS:
        out[name] = row[name]
    for name, default in _CDR_JSON.items():
        out[name] = _loads(row[name], default())
    return out


def _recording_from_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(_loads(row["extra"], {}))
    for name in _REC_SCALARS:
        out[name] = row[name]
    for name, default in _REC_JSON.items():
        out[name] = _loads(row[name], default())
    return out


def _schedule_from_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "state": row["state"], "due_at": float(row["due_at"]),
        "attempt": int(row["attempt"]), "data": _loads(row["data"], {}),
        "created_at": float(row["created_at"]), "updated_at": float(row["updated_at"]),
    }


def _outbox_to_row(item: OutboxItem) -> dict[str, Any]:
    return {
        "id": item.id, "event_id": item.event_id, "target": item.target, "url": item.url,
        "body": bytes(item.body), "headers": _dumps(dict(item.headers)),
        "created_at": float(item.created_at), "next_at": float(item.next_at),
        "attempts": int(item.attempts), "state": item.state, "last_error": item.last_error,
        "delivered_at": item.delivered_at, "max_attempts": int(item.max_attempts),
    }


def _outbox_from_row(row: Mapping[Any, Any]) -> OutboxItem:
    return OutboxItem(
        id=row["id"], event_id=row["event_id"], target=row["target"], url=row["url"],
        body=bytes(row["body"]), headers={str(k): str(v) for k, v in
                                          _loads(row["headers"], {}).items()},
        created_at=float(row["created_at"]), next_at=float(row["next_at"]),
        attempts=int(row["attempts"]), state=row["state"], last_error=row["last_error"],
        delivered_at=None if row["delivered_at"] is None else float(row["delivered_at"]),
        max_attempts=int(row["max_attempts"]),
    )
