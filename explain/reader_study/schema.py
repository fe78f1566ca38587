"""The reader study's database: studies, cases and their images, readers, their worklists and answers.

SQLAlchemy Core, so one schema serves SQLite (the default, a file) and PostgreSQL (a
server several reading machines share). Every answer is one committed row: a reader who
closes the browser, or a server that is killed, loses nothing that was answered.
Answers are unique per reader, case and step, so a repeated answer is refused by the
database itself, whichever server process receives it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from explain.runs import DEFAULT_STORE, masked
from vfrac.errors import InputError

DATABASE_ENV = "VFRAC_READER_STUDY_DB"
CALLS = ("benign", "malignant")
CONFIDENCE = range(1, 6)  # 1: unsure .. 5: certain
RATINGS = ("on the lesion", "partly", "off the lesion")
STEPS = ("unaided", "aided")
IMAGE_KINDS = ("bone", "soft", "map", "other", "lesion")  # "lesion" (the feature masks) is never served

metadata = MetaData()

studies = Table(
    "studies", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("cv_run_id", String(64), nullable=False),
    Column("cohort_hash", String(128), nullable=False),
    Column("method", String(32), nullable=False),
    Column("layer", String(128), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("decoy_share", Float, nullable=False),
    Column("features", Text, nullable=False),  # the cohort's visual features, comma-separated
    Column("simulated", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

cases = Table(
    "cases", metadata,
    Column("id", Integer, primary_key=True),
    Column("study_id", ForeignKey("studies.id"), nullable=False, index=True),
    Column("code", String(16), nullable=False),  # in the reader's URLs: random, not the position
    Column("patient_id", String(200), nullable=False),  # the manifest's pseudonymous id
    Column("fold", Integer, nullable=False),
    Column("label", String(16), nullable=False),  # the truth: for the analysis, never sent to a reader
    Column("probability", Float, nullable=False),
    Column("call", String(16), nullable=False),
    Column("decoy", Boolean, nullable=False),
    Column("stratum", String(64), nullable=False),
    Column("slices", Integer, nullable=False),
    Column("display_size", Integer, nullable=False),
    Column("lesion_slices", Integer, nullable=False),  # slices where the feature masks show the lesion
    Column("map_energy_ratio", Float),  # of the map shown (a decoy's on decoy cases), where there is a lesion
    Column("map_pointing_hit", Float),
    UniqueConstraint("study_id", "code"),
)

images = Table(
    "images", metadata,
    Column("id", Integer, primary_key=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False, index=True),
    Column("slice_index", Integer, nullable=False),  # 0.. in the order shown, cranial to caudal
    Column("z", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("png", LargeBinary, nullable=False),
    UniqueConstraint("case_id", "slice_index", "kind"),
)

readers = Table(
    "readers", metadata,
    Column("id", Integer, primary_key=True),
    Column("study_id", ForeignKey("studies.id"), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("token_digest", String(64), nullable=False, unique=True),
    UniqueConstraint("study_id", "number"),
)

worklists = Table(
    "worklists", metadata,
    Column("reader_id", ForeignKey("readers.id"), primary_key=True),
    Column("position", Integer, primary_key=True),  # 0..K-1: the reader's own order
    Column("case_id", ForeignKey("cases.id"), nullable=False),
    UniqueConstraint("reader_id", "case_id"),
)

answers = Table(
    "answers", metadata,
    Column("id", Integer, primary_key=True),
    Column("reader_id", ForeignKey("readers.id"), nullable=False, index=True),
    Column("case_id", ForeignKey("cases.id"), nullable=False),
    Column("step", String(16), nullable=False),
    Column("call", String(16), nullable=False),
    Column("confidence", Integer, nullable=False),
    Column("map_rating", String(32)),  # aided only
    Column("map_feature", String(64)),  # aided only; "" when the reader saw none of the features
    Column("click_slice", Integer),  # aided only: where the reader placed the lesion
    Column("click_x", Float),  # 0..1 across the displayed crop
    Column("click_y", Float),
    Column("simulated", Boolean, nullable=False, default=False),
    Column("answered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("reader_id", "case_id", "step"),
)


def default_database() -> str:
    """$VFRAC_READER_STUDY_DB, else an SQLite file beside the default MLflow store (mlruns/)."""
    return os.environ.get(DATABASE_ENV) or f"sqlite:///{Path(DEFAULT_STORE).resolve() / 'reader_studies.db'}"


def open_database(url: str) -> Engine:
    """An engine on the study database, its tables created if missing.

    SQLite gets write-ahead logging and a busy timeout, so the reading app's threads
    (two readers at once) wait for each other's commits instead of failing.
    """
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {},
                               pool_pre_ping=True)
    except (ArgumentError, ImportError) as error:
        raise InputError(f"{masked(url)} is not a database URL vfrac can open: {error}") from error
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        metadata.create_all(engine)
    except SQLAlchemyError as error:  # unreachable server, refused login, unwritable file
        reason = str(error.orig if getattr(error, "orig", None) else error).strip().splitlines()[0]
        raise InputError(f"cannot open the study database {masked(url)}: {reason}") from error
    return engine


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
