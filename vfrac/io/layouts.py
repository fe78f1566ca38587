"""Manifests from datasets laid out by others: TotalSegmentator outputs and VerSe.

Each row of a labels table (patient_id, label, vertebra) is paired with its CT and the
segmentation that already marks the fractured level, and the manifest points at that
segmentation (`roi` + `roi_label`): nothing is copied. Every problem is collected and
raised at once, as the manifest's are, so a user fixes the table in one pass.

Layouts (DIR is the folder given):
- totalsegmentator: `DIR/<patient_id>/ct.nii.gz` (or `ct.nii`, or a DICOM series folder
  `ct/`) and TotalSegmentator's output for it, either `DIR/<patient_id>/segmentations/`
  (per-structure masks, `vertebrae_L1.nii.gz`) or `DIR/<patient_id>/segmentations.nii.gz`
  (`--ml`, the total task's ids).
- verse: `DIR/rawdata/sub-<patient_id>/<name>_ct.nii.gz`, its mask
  `DIR/derivatives/sub-<patient_id>/<name>_seg-vert_msk.nii.gz` and, when present, its
  centroids `<name>_seg-subreg_ctd.json` beside the mask.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vfrac.cohort import identity_errors, read_patient_table
from vfrac.errors import InputError
from vfrac.io.vertebrae import TOTALSEGMENTATOR, VERSE, Scheme, totalsegmentator_roi, verse_roi

LABEL_COLUMNS = ("patient_id", "label", "vertebra")
MANIFEST_COLUMNS = ("patient_id", "label", "ct", "roi", "roi_label", "vertebra")
TS_CTS = ("ct.nii.gz", "ct.nii", "ct")
TS_OUTPUTS = ("segmentations.nii.gz", "segmentations.nii", "segmentations")
VERSE_CT_SUFFIXES = ("_ct.nii.gz", "_ct.nii")


@dataclass(frozen=True)
class Entry:
    """One manifest row; paths as found, made relative to the manifest when it is written."""

    patient_id: str
    label: str
    ct: Path
    roi: Path
    roi_label: int | None
    vertebra: str


@dataclass(frozen=True)
class Imported:
    entries: list[Entry]
    unlabelled: list[str]  # ids with a CT in the folder but no row in the labels table: left out


@dataclass(frozen=True)
class Layout:
    """How one kind of dataset names its patients and where their CT and ROI are."""

    scheme: Scheme
    patients: Callable[[Path], list[str]]  # folder -> ids that have a CT there
    locate: Callable[[Path, str, str], tuple[Path, Path, int | None]]  # (folder, id, level) -> ct, roi, roi_label


def import_cohort(layout: str, folder, labels) -> Imported:
    """The manifest entries of the labelled patients of `folder`; InputError lists every problem."""
    folder, labels = Path(folder), Path(labels)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    kind = LAYOUTS[layout]
    with_ct = kind.patients(folder)
    entries, problems, seen = [], [], {}
    for number, row in _label_rows(labels):
        entry, errors = _checked_entry(kind, folder, row, seen)
        seen.setdefault(row["patient_id"], number)
        entries += [entry] if entry else []
        where = f"{labels}, row {number} (patient_id {row['patient_id'] or '?'})"
        problems += [f"{where}{f', column {column}' if column else ''}: {reason}" for column, reason in errors]
    if problems:
        raise InputError(f"{len(problems)} problem(s) importing {folder} with {labels}:\n" + "\n".join(problems))
    labelled = {e.patient_id for e in entries}
    return Imported(entries=entries, unlabelled=[pid for pid in with_ct if pid not in labelled])


def refuse_overwrite(out: Path, force: bool) -> None:
    """A manifest may hold hand edits, so replacing one takes `force`."""
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the manifest's file name, e.g. {out / 'manifest.csv'}")
    if out.exists() and not force:
        raise InputError(f"{out}: already exists; pass --force to replace it")


def write_manifest(entries: list[Entry], out, force: bool = False) -> None:
    """Write the manifest with paths relative to its folder, atomically (never half a file)."""
    out = Path(out)
    refuse_overwrite(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    with open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows((e.patient_id, e.label, _relative(e.ct, out.parent), _relative(e.roi, out.parent),
                          "" if e.roi_label is None else e.roi_label, e.vertebra) for e in entries)
    os.replace(partial, out)


def paths_outside(entries: list[Entry], folder: Path) -> list[Path]:
    """The entries' paths that leave `folder` once resolved: read_manifest needs allow_outside for them."""
    root = Path(folder).resolve()
    return [path for e in entries for path in (e.ct, e.roi) if not path.resolve().is_relative_to(root)]


def _relative(path: Path, folder: Path) -> str:
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive (Windows): no relative path exists
        return str(path.absolute())


def _label_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """The labels table's rows, numbered from 1 as the manifest's are; a bad table raises."""
    columns, records = read_patient_table(path, LABEL_COLUMNS, "labels table")
    width = len(columns)
    return [(n, dict(zip(columns, (fields + [""] * width)[:width], strict=True))) for n, fields in
            enumerate(records, start=1)]


def _row_errors(row: dict, scheme: Scheme, seen: dict[str, int]) -> list[tuple[str, str]]:
    errors = identity_errors(row, seen)  # as the manifest checks them
    try:
        scheme.level(row["vertebra"])
    except InputError as error:
        errors.append(("vertebra", str(error)))
    return errors


def _checked_entry(kind: Layout, folder: Path, row: dict, seen: dict[str, int]) -> tuple[Entry | None, list]:
    """The row's entry, or None and its errors; the files are looked for whenever id and level are usable."""
    errors = _row_errors(row, kind.scheme, seen)
    if {"patient_id", "vertebra"} & {column for column, _ in errors}:
        return None, errors
    try:
        entry = _entry(kind, folder, row)
    except InputError as error:
        return None, [*errors, ("", str(error))]
    return (None if errors else entry), errors


def _entry(kind: Layout, folder: Path, row: dict) -> Entry:
    level = kind.scheme.level(row["vertebra"])
    ct, roi, roi_label = kind.locate(folder, row["patient_id"], level)
    return Entry(patient_id=row["patient_id"], label=row["label"].lower(), ct=ct, roi=roi, roi_label=roi_label,
                 vertebra=level)


def _one(folder: Path, names: tuple[str, ...], what: str, expected: str) -> Path:
    """The single one of `names` in `folder`: none or several is an InputError."""
    found = [folder / name for name in names if (folder / name).exists()]
    if not found:
        raise InputError(f"{folder}: no {what}; expected {expected}")
    if len(found) > 1:
        raise InputError(f"{folder}: holds {len(found)} {what}s ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def _totalsegmentator_patients(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and any((d / n).exists() for n in TS_CTS))


def _totalsegmentator_locate(folder: Path, pid: str, level: str) -> tuple[Path, Path, int | None]:
    patient = folder / pid
    if not patient.is_dir():
        raise InputError(f"{patient}: no such folder; this layout expects {folder}/<patient_id>/ct.nii.gz "
                         "and TotalSegmentator's output beside it")
    ct = _one(patient, TS_CTS, "CT", "ct.nii.gz, ct.nii or a DICOM series folder ct/")
    output = _one(patient, TS_OUTPUTS, "TotalSegmentator output",
                  "a folder segmentations/ of per-structure masks or a multi-label map segmentations.nii.gz")
    return (ct, *totalsegmentator_roi(output, level))


def _verse_patients(folder: Path) -> list[str]:
    raw = folder / "rawdata"
    if not raw.is_dir():
        raise InputError(f"{folder}: no rawdata/ folder; a VerSe dataset holds rawdata/sub-<id>/<name>_ct.nii.gz "
                         "and derivatives/sub-<id>/<name>_seg-vert_msk.nii.gz")
    return sorted(d.name[len("sub-"):] for d in raw.glob("sub-*") if d.is_dir() and _verse_cts(d))


def _verse_cts(subject: Path) -> list[Path]:
    return sorted(p for p in subject.iterdir() if p.name.endswith(VERSE_CT_SUFFIXES))


def _verse_locate(folder: Path, pid: str, level: str) -> tuple[Path, Path, int]:
    raw = folder / "rawdata" / f"sub-{pid}"
    cts = _verse_cts(raw) if raw.is_dir() else []
    if len(cts) != 1:
        found = f"found {', '.join(p.name for p in cts)}; keep one" if cts else "found none"
        raise InputError(f"{raw}: expected one CT named <name>_ct.nii.gz; {found}")
    ct = cts[0]
    name = ct.name[: ct.name.rindex("_ct.nii")]
    derived = folder / "derivatives" / f"sub-{pid}"
    mask = _one(derived, (f"{name}_seg-vert_msk.nii.gz", f"{name}_seg-vert_msk.nii"), "vertebra mask",
                f"{name}_seg-vert_msk.nii.gz")
    centroids = derived / f"{name}_seg-subreg_ctd.json"
    return ct, mask, verse_roi(mask, level, centroids if centroids.is_file() else None)


LAYOUTS = {
    "totalsegmentator": Layout(TOTALSEGMENTATOR, _totalsegmentator_patients, _totalsegmentator_locate),
    "verse": Layout(VERSE, _verse_patients, _verse_locate),
}
