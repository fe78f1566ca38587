"""Prepare each patient once: decode, HU, ROI squares, 3-slice crops, one cache file.

An entry's key hashes the CT files, the ROI file and the crop settings with a format
version, so any change gives a new entry and nothing is served stale. Entries are
written to a temporary file and renamed, so a crash or Ctrl-C never leaves half an
entry (and a later run removes the temporary file a kill leaves). A small memo maps
file sizes and times to the content key, so a run where nothing changed reads no CT.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from vfrac.cohort import Patient
from vfrac.data.crops import BOX_MODES, crop_stack, lesion_slices, roi_boxes
from vfrac.errors import InputError
from vfrac.io.volume import load_mask, load_volume

CACHE_VERSION = 2
HU_MIN, HU_MAX = -32768, 32767
# _atomic_write's temporary names (mkstemp: "." + final name + "." + 8 random characters + ".tmp").
TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
STALE_AFTER_S = 3600  # a temporary untouched this long belongs to a killed process


@dataclass(frozen=True)
class CropSettings:
    """What shapes a cache entry; every field is part of the entry's key."""

    margin: float = 0.1  # ROI square grown by this fraction of its side on each side
    box_mode: str = "slice"  # "slice": a square per slice; "union": one per patient
    context: float = 0.2  # extra surroundings kept around the square, for box jitter
    cache_size: int = 192  # crops are resampled to cache_size x cache_size (square: 137 px)
    min_area: float = 0.35  # slice rule: keep slices whose ROI area is >= this share of its largest

    def __post_init__(self):
        if not 0.0 <= self.min_area <= 1.0:
            raise ValueError(f"min_area must be in [0, 1], received {self.min_area}")
        if self.box_mode not in BOX_MODES:
            raise ValueError(f"box_mode must be one of {BOX_MODES}, received {self.box_mode!r}")
        if self.margin < 0 or self.context < 0:
            raise ValueError(f"margin and context must be >= 0, received {self.margin}, {self.context}")
        if not 8 <= self.cache_size <= 1024:
            raise ValueError(f"cache_size must be 8..1024, received {self.cache_size}")

    @classmethod
    def from_values(cls, values, defaults: CropSettings | None = None) -> CropSettings:
        """Settings from any mapping that holds them (flags, a run config, logged params as text);
        fields it lacks come from `defaults`, values are cast to the defaults' types."""
        defaults = defaults or cls()
        return cls(**{name: type(default)(values.get(name, default)) for name, default in asdict(defaults).items()})


@dataclass(frozen=True)
class Prepared:
    """One patient's crops: HU int16 (n, S, S, 3), channels = slices z-1, z, z+1.

    Crop i shows the ROI square `boxes[i]` (y0, x0, size in voxels of slice
    `slices[i]`) grown by `context` on each side, so the square itself fills the
    central 1 / (1 + 2 context) of the crop. `dropped` lists the ROI slices the
    slice rule left out (ROI area under `min_area` of its largest).
    """

    patient_id: str
    crops: np.ndarray
    slices: np.ndarray
    boxes: np.ndarray
    spacing: np.ndarray
    context: float
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))


@dataclass
class PrepareResult:
    entries: dict[str, Path] = field(default_factory=dict)  # patient_id -> cache file
    failures: dict[str, str] = field(default_factory=dict)  # patient_id -> reason
    built: int = 0
    reused: int = 0


def build_entry(patient: Patient, settings: CropSettings) -> Prepared:
    """Load the CT and ROI and cut every crop (the expensive part)."""
    volume = load_volume(patient.ct)
    roi = roi_voxels(load_mask(patient.roi, volume, patient.roi_label), patient)
    return cut_crops(patient.patient_id, volume, roi, settings)


def cut_crops(patient_id: str, volume, roi: np.ndarray, settings: CropSettings) -> Prepared:
    """Every crop of the ROI's slices kept by the slice rule; what a cache entry holds."""
    boxes = roi_boxes(roi, margin=settings.margin, mode=settings.box_mode, min_area=settings.min_area)
    _, dropped = lesion_slices(roi, settings.min_area)
    size = settings.cache_size
    crops = np.empty((len(boxes), size, size, 3), dtype=np.int16)
    for i, box in enumerate(boxes):
        stack = crop_stack(volume.hu, box.grown(settings.context)).astype(np.float32)
        shrink = stack.shape[0] > size
        resized = cv2.resize(stack, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        crops[i] = np.clip(np.rint(resized), HU_MIN, HU_MAX)
    return Prepared(
        patient_id=patient_id,
        crops=crops,
        slices=np.array([b.z for b in boxes], dtype=np.int32),
        boxes=np.array([(b.y0, b.x0, b.size) for b in boxes], dtype=np.int32).reshape(-1, 3),
        spacing=np.array(volume.spacing),
        context=settings.context,
        dropped=dropped.astype(np.int32),
    )


def roi_voxels(mask: np.ndarray, patient: Patient) -> np.ndarray:
    """The ROI as booleans: voxels equal to roi_label, or all non-zero voxels."""
    if patient.roi_label is not None:
        roi = mask == patient.roi_label
        what = f"no voxel with label {patient.roi_label}"
    else:
        labelled = mask[mask != 0]
        if labelled.size and labelled.min() != labelled.max():
            values = np.unique(labelled)
            raise InputError(f"{patient.roi}: the ROI mask holds several labels "
                             f"({', '.join(map(str, values[:10]))}); say which with a roi_label column "
                             "(experiments.predict: --roi-label)")
        roi = mask != 0
        what = "no voxel set"
    if not roi.any():
        raise InputError(f"{patient.roi}: the ROI mask has {what}")
    return roi


def prepare_patient(patient: Patient, settings: CropSettings, cache_dir: Path) -> tuple[Path, bool]:
    """The patient's cache file, built only if missing; returns (path, built)."""
    path, memo, key = _entry_path(patient, settings, Path(cache_dir))
    built = not path.is_file()
    if built:
        write_entry(path, build_entry(patient, settings))
    if not memo.is_file():
        _atomic_write(memo, key.encode())
    return path, built


def cached_entry(patient: Patient, settings: CropSettings, cache_dir: Path) -> Path:
    """The patient's existing cache file for these settings; never builds one.

    For readers of a finished run (the review): an entry built now could differ from
    the one the run trained on, so a missing entry is an error, not a rebuild.
    """
    path, _, _ = _entry_path(patient, settings, Path(cache_dir))
    if not path.is_file():
        raise InputError(f"patient {patient.patient_id}: no cache entry in {cache_dir} for the run's crop "
                         f"settings ({path.name}); run the same experiments.cv command again to rebuild it")
    return path


def cohort_hash(manifest: Path, entries: dict) -> str:
    """What identifies a cohort's data: the manifest's bytes and every patient's entry name,
    which carries the content key of its CT, ROI and settings (16 hex digits)."""
    digest = hashlib.sha256(Path(manifest).read_bytes())
    for pid in sorted(entries):
        digest.update(Path(entries[pid]).name.encode())
    return digest.hexdigest()[:16]


def current_cohort_hash(manifest: Path, patients, settings: CropSettings, cache_dir: Path) -> str:
    """`cohort_hash` of the cohort as its files are now, built or not: for checking a finished run."""
    return cohort_hash(manifest, {p.patient_id: _entry_path(p, settings, Path(cache_dir))[0] for p in patients})


def _entry_path(patient: Patient, settings: CropSettings, cache_dir: Path) -> tuple[Path, Path, str]:
    """(entry path, memo path, content key); the memo spares hashing unchanged files again."""
    memo = _memo(patient, settings, cache_dir)
    key = memo.read_text().strip() if memo.is_file() else _content_key(patient, settings)
    return cache_dir / f"{patient.patient_id}-{key[:24]}.npz", memo, key


def _known_entry(patient: Patient, settings: CropSettings, cache_dir: Path) -> Path | None:
    """The patient's entry when its memo names one that exists (files unchanged since): no hashing, no reading."""
    if not _memo(patient, settings, cache_dir).is_file():
        return None
    path, _, _ = _entry_path(patient, settings, cache_dir)
    return path if path.is_file() else None


def _memo(patient: Patient, settings: CropSettings, cache_dir: Path) -> Path:
    return cache_dir / "keys" / f"{patient.patient_id}-{_stat_key(patient, settings)[:24]}"


def write_entry(path: Path, prepared: Prepared) -> None:
    fields = asdict(prepared)
    fields["patient_id"] = np.array(fields["patient_id"])
    _atomic_write(path, fields)


def read_entry(path) -> Prepared:
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable cache entry ({error}); delete it to rebuild") from error
    fields["patient_id"] = str(fields["patient_id"])
    fields["context"] = float(fields["context"])
    return Prepared(**fields)


def entry_spacing(path) -> tuple[float, float, float]:
    """The (dz, dy, dx) mm of the CT an entry was cut from, without loading its crops."""
    with np.load(path, allow_pickle=False) as data:
        return tuple(float(v) for v in data["spacing"])


def slice_counts(entries: dict) -> dict[str, tuple[int, int]]:
    """patient_id -> (crops kept, ROI slices dropped by the slice rule), without loading crops."""
    counts = {}
    for pid, path in entries.items():
        with np.load(path, allow_pickle=False) as data:
            counts[pid] = (len(data["slices"]), len(data["dropped"]))
    return counts


def prepare_cohort(patients, settings: CropSettings, cache_dir, workers: int = 1,
                   skip_bad: bool = False, on_progress=None) -> PrepareResult:
    """Prepare every patient, in `workers` processes; a bad patient raises unless skip_bad.

    `on_progress(patient_id, built)` is called as each patient finishes.
    """
    cache_dir = Path(cache_dir)
    _check_writable(cache_dir)
    _remove_stale_temporaries(cache_dir)
    result = PrepareResult()

    def record(patient, outcome):
        if isinstance(outcome, Exception):
            if not skip_bad:
                raise InputError(f"patient {patient.patient_id}: {outcome}") from outcome
            result.failures[patient.patient_id] = str(outcome)
        else:
            path, built = outcome
            result.entries[patient.patient_id] = path
            result.built += built
            result.reused += not built
        if on_progress:
            on_progress(patient.patient_id, isinstance(outcome, tuple) and outcome[1])

    todo = []
    for patient in patients:  # entries known from their memo need no worker (a rerun starts none)
        known = _known_entry(patient, settings, cache_dir)
        if known:
            record(patient, (known, False))
        else:
            todo.append(patient)
    if workers <= 1 or len(todo) <= 1:
        for patient in todo:
            record(patient, _attempt(patient, settings, cache_dir))
        return result
    # spawn, not fork: a parent that already runs TensorFlow threads must not fork.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_attempt, p, settings, cache_dir): p for p in todo}
        try:
            for future in as_completed(futures):
                record(futures[future], future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return result


def _check_writable(cache_dir: Path) -> None:
    """Create the cache and its memo folder and try a file in each, so that a read-only
    cache stops the run once, up front, rather than in every worker."""
    for folder in (cache_dir, cache_dir / "keys"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise InputError(f"cache folder {folder} is not writable: {error.strerror or error}") from error


def _remove_stale_temporaries(cache_dir: Path) -> None:
    """Delete what a killed `_atomic_write` left: its own temporary names only, untouched
    for STALE_AFTER_S. A live writer's file is newer: entries are built before their file
    is opened, and writing one takes seconds, each write refreshing its time."""
    for folder in (cache_dir, cache_dir / "keys"):
        for path in folder.glob(".*.tmp"):
            try:
                if TEMPORARY.fullmatch(path.name) and time.time() - path.stat().st_mtime > STALE_AFTER_S:
                    path.unlink()
            except FileNotFoundError:  # another process removed or renamed it first
                continue


def _attempt(patient, settings, cache_dir):
    """prepare_patient, with input errors returned rather than raised (for the pool)."""
    try:
        return prepare_patient(patient, settings, cache_dir)
    except InputError as error:
        return error
    except Exception as error:  # a bug or a reader failure: stop, but say which patient
        raise RuntimeError(f"patient {patient.patient_id}: {type(error).__name__}: {error}") from error


def _files(patient: Patient) -> list[Path]:
    ct = sorted(p for p in patient.ct.rglob("*") if p.is_file()) if patient.ct.is_dir() else [patient.ct]
    return ct + [patient.roi]


def _header(patient: Patient, settings: CropSettings) -> bytes:
    return json.dumps([CACHE_VERSION, asdict(settings), patient.roi_label], sort_keys=True).encode()


def _content_key(patient: Patient, settings: CropSettings) -> str:
    digest = hashlib.sha256(_header(patient, settings))
    for path in _files(patient):
        digest.update(f"|{path.stat().st_size}|".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _stat_key(patient: Patient, settings: CropSettings) -> str:
    digest = hashlib.sha256(_header(patient, settings))
    for path in _files(patient):
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _atomic_write(path: Path, content) -> None:
    """Write bytes or npz fields to a temporary file (named as TEMPORARY), then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            if isinstance(content, bytes):
                out.write(content)
            else:
                np.savez(out, **content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it owner-only
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
