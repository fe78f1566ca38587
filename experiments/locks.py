"""A lock file beside a local database, so processes that start together create it once."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def database_lock(url: str):
    """Hold an exclusive lock next to a sqlite database while it is opened; other URLs need none."""
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = Path(url.removeprefix("sqlite:///"))
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
