"""A lock around opening a database, so processes that start together create its tables once.

Optuna and MLflow create their tables on first use; two processes doing it at the same
moment collide (SQLite: "table already exists"; PostgreSQL: a unique violation in its
catalogue). SQLite: a lock file beside the database. PostgreSQL: a session advisory lock
in the database itself, released when its connection closes, also if the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import zlib
from pathlib import Path

import sqlalchemy


@contextlib.contextmanager
def database_lock(url: str, engine_options: dict | None = None):
    """Hold an exclusive lock on the database at `url` while the block opens it; other URLs need none."""
    if url.startswith("sqlite:///"):
        with _file_lock(Path(url.removeprefix("sqlite:///"))):
            yield
    elif url.startswith("postgresql"):
        with _advisory_lock(url, engine_options or {}):
            yield
    else:
        yield


@contextlib.contextmanager
def _file_lock(database: Path):

    with open(database.with_name(database.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(url: str, engine_options: dict):

    key = zlib.crc32(b"vfrac: create tables")  # one lock per database: advisory locks are per database
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args=engine_options.get("connect_args", {}))
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("select pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("select pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()
