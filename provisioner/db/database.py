"""One connection to the provisioner's store, on SQLite or PostgreSQL, with one way to run SQL.

:func:`connect` takes ``sqlite:///path`` (or a plain path) or ``postgresql://user@host:port/db``.
A PostgreSQL password never travels in the URL (a URL holding one is refused): it is read from
a root-only file and handed to libpq as a keyword, so it is on no command line and in no log.

Statements are written once with SQLite's placeholders (:mod:`provisioner.db.dialect`
translates them). :meth:`Database.transaction` serializes writers on both engines:
``BEGIN IMMEDIATE`` takes SQLite's write lock up front; on PostgreSQL the transaction first takes
one advisory lock, so two writers never interleave there either (the same guarantee the code
has always relied on, e.g. "read the highest id, then insert the next"). Outside a transaction
every statement commits by itself. Driver errors come out as :class:`DatabaseError` /
:class:`IntegrityError`, whichever engine is behind.

>>> import tempfile, pathlib
>>> db = connect(str(pathlib.Path(tempfile.mkdtemp()) / "t.db"))
>>> _ = db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
>>> with db.transaction():
...     _ = db.execute("INSERT INTO t VALUES (?, ?)", ("a", 1))
>>> dict(db.execute("SELECT * FROM t").fetchone())
{'k': 'a', 'v': 1}
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from provisioner.db.dialect import Dialect, ddl, to_pyformat
from provisioner.errors import SlotError

Params = Sequence[Any] | Mapping[str, Any]

# pg_advisory_xact_lock key of the store's writer lock ("slotwarden" in a 63-bit number).
WRITER_LOCK_KEY = 0x736C6F7477617264


class Cursor(Protocol):
    """What :meth:`Database.execute` returns (sqlite3's or psycopg's cursor)."""

    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class DatabaseError(SlotError):
    """The store refused a statement or could not be reached; the message names the store."""


class IntegrityError(DatabaseError):
    """A constraint (primary key, unique, check, foreign key) refused a write."""


class Row(tuple[Any, ...]):
    """A PostgreSQL row read by index or by column name, like :class:`sqlite3.Row`."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _pg_row_factory(cursor: Any) -> Any:
    index = {d.name: i for i, d in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._index = index
        return row
    return make


def _pg_params(params: Params) -> Params:
    # SQLite stores a bool as 0/1 in an INTEGER column; PostgreSQL would refuse a boolean there.
    if isinstance(params, Mapping):
        return {k: int(v) if isinstance(v, bool) else v for k, v in params.items()}
    return [int(v) if isinstance(v, bool) else v for v in params]


class Database:
    """A connection plus its dialect. Cheap to open; one per command or request."""

    def __init__(self, conn: Any, dialect: Dialect, where: str) -> None:
        self.conn = conn
        self.dialect: Dialect = dialect
        self.where = where  # the store's name in messages: a path, or the URL without secrets
        if dialect == "sqlite":
            self._integrity: type[Exception] = sqlite3.IntegrityError
            self._error: type[Exception] = sqlite3.Error
        else:
            import psycopg
            self._integrity = psycopg.IntegrityError
            self._error = psycopg.Error

    def _fail(self, exc: Exception) -> DatabaseError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, self._integrity):
            return IntegrityError(f"the store {self.where} refused a write: {first}")
        return DatabaseError(f"the store {self.where}: {first}")

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Run one statement; returns the driver's cursor (fetchone, fetchall, iteration)."""
        try:
            if self.dialect == "sqlite":
                cur: Cursor = self.conn.execute(sql, params)
            else:
                cur = self.conn.execute(to_pyformat(sql), _pg_params(params))
            return cur
        except self._error as exc:
            raise self._fail(exc) from None

    def executemany(self, sql: str, seq: Iterable[Params]) -> None:
        try:
            if self.dialect == "sqlite":
                self.conn.executemany(sql, seq)
            else:
                with self.conn.cursor() as cur:
                    cur.executemany(to_pyformat(sql), [_pg_params(p) for p in seq])
        except self._error as exc:
            raise self._fail(exc) from None

    def execute_ddl(self, statement: str) -> None:
        """Run one DDL statement written in SQLite's types (see :func:`dialect.ddl`)."""
        self.execute(ddl(statement, self.dialect))

    @property
    def in_transaction(self) -> bool:
        if self.dialect == "sqlite":
            return bool(self.conn.in_transaction)
        from psycopg.pq import TransactionStatus
        return bool(self.conn.info.transaction_status != TransactionStatus.IDLE)

    def rollback(self) -> None:
        """Abandon an open transaction (a failed request must not leak into the next)."""
        if self.in_transaction:
            self.conn.rollback() if self.dialect == "postgresql" else self.conn.execute("ROLLBACK")

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """A write transaction that holds the store's writer lock until it commits or rolls back."""
        if self.dialect == "sqlite":
            self.execute("BEGIN IMMEDIATE")
        else:
            self.execute("BEGIN")
            self.execute("SELECT pg_advisory_xact_lock(?)", (WRITER_LOCK_KEY,))
        try:
            yield self
        except BaseException:
            try:
                self.execute("ROLLBACK")
            except DatabaseError:
                pass  # the connection is gone: nothing was committed
            raise
        self.execute("COMMIT")

    def tables(self) -> set[str]:
        """The names of the tables in the store (the provisioner's schema only)."""
        if self.dialect == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        else:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        return {r[0] for r in self.execute(sql)}

    def close(self) -> None:
        try:
            self.conn.close()
        except self._error:
            pass


def _open_sqlite(path: Path, timeout: float) -> Database:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = not path.exists()
        conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: durable across a process kill (what the kill -9 tests need); a power loss
        # may lose the last commit, which `doctor` then reports as drift.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except (OSError, sqlite3.Error) as exc:
        raise DatabaseError(f"cannot open the store {path}: {exc}") from None
    return Database(conn, "sqlite", str(path))


def read_password_file(path: Path) -> str:
    """The password in PATH, which must be a regular file only its owner (root or us) can read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SlotError(f"store.password_file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SlotError(f"store.password_file {path}: not a regular file")
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o077:
            raise SlotError(f"store.password_file {path}: must be owned by root and mode 0600 "
                            f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        return data.decode().rstrip("\n")
    except UnicodeDecodeError:
        raise SlotError(f"store.password_file {path}: not UTF-8 text") from None


def redact(url: str) -> str:
    """URL without any password, fit for a message or a log."""
    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
    parts = parts._replace(query=query)
    if parts.password is None:
        return parts.geturl()
    host = parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{user}{host}{port}").geturl()


def _open_postgresql(url: str, password_file: Path | None, timeout: float) -> Database:
    parts = urlsplit(url)
    if parts.password is not None or "password=" in parts.query:
        raise SlotError(f"store url {redact(url)}: holds a password; put it in store.password_file instead")
    if not parts.path.strip("/"):
        raise SlotError(f"store url {redact(url)}: expected postgresql://user@host:port/database")
    try:
        import psycopg
    except ImportError:
        raise SlotError("a PostgreSQL store needs psycopg (pip install 'psycopg[binary]')") from None
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, int(timeout)),
                              "application_name": "slotwarden"}
    if password_file is not None:
        kwargs["password"] = read_password_file(password_file)
    try:
        conn = psycopg.connect(url, row_factory=_pg_row_factory, **kwargs)
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(f"cannot open the store {redact(url)}: {first}") from None
    return Database(conn, "postgresql", redact(url))


def connect(url: str, password_file: Path | None = None, timeout: float = 30) -> Database:
    """Open the store at URL: ``sqlite:///abs/path``, an absolute path, or ``postgresql://…``."""
    if url.startswith(("postgresql://", "postgres://")):
        return _open_postgresql(url, password_file, timeout)
    if url.startswith("sqlite://"):
        parts = urlsplit(url)
        if parts.netloc:
            raise SlotError(f"store url {url}: expected sqlite:///absolute/path")
        url = "/" + unquote(parts.path).lstrip("/")
    if not url.startswith("/") and "://" in url:
        raise SlotError(f"store url {redact(url)}: expected sqlite:///path or postgresql://user@host:port/db")
    return _open_sqlite(Path(url), timeout)
