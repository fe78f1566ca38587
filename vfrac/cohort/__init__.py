"""The cohort manifest: one row per patient, checked before any CT is opened.

Every problem is reported with the manifest, the row, the column and the reason, all
at once, so a user fixes a spreadsheet in one pass rather than one error per run.
`python -m vfrac.cohort import ...` (vfrac/cohort/__main__.py) writes a manifest for a
TotalSegmentator or VerSe folder (`vfrac.io.layouts`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from vfrac.errors import InputError
from vfrac.io.nifti import is_nifti
from vfrac.io.volume import MASK_SUFFIXES

REQUIRED_COLUMNS = ("patient_id", "label", "ct", "roi")
LABELS = ("benign", "malignant")
# Pseudonymous ids end up in file names, so they must be plain.
PATIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# ASCII digits only: str.isdigit() accepts '²', which int() refuses; 0 would select the background.
ROI_LABEL = re.compile(r"0*[1-9][0-9]{0,8}")


@dataclass(frozen=True)
class Patient:
    """One manifest row, with paths resolved against the manifest's folder."""

    patient_id: str
    label: str
    ct: Path
    roi: Path
    roi_label: int | None = None  # voxel value of the ROI in a multi-label mask
    features: dict[str, int] = field(default_factory=dict)  # feature_<name> -> 0/1
    masks: dict[str, Path] = field(default_factory=dict)  # mask_<name> -> path
    readers: dict[str, str] = field(default_factory=dict)  # reader_<name> -> label
    vertebra: str = ""  # optional column: the fractured level, e.g. L1
    centre: str = ""  # optional column: where the patient was scanned

    @property
    def is_malignant(self) -> bool:
        return self.label == "malignant"


@dataclass(frozen=True)
class Cohort:
    manifest: Path
    patients: list[Patient]
    problems: list[str]  # rows left out with skip_bad=True, one message each


def read_manifest(path, skip_bad: bool = False, allow_outside: bool = False) -> Cohort:
    """Read and validate a manifest; bad rows raise, or with `skip_bad` are listed.

    Paths must resolve (symlinks and '..' followed) inside the manifest's folder unless
    `allow_outside`: a manifest from elsewhere must not make vfrac read, hash and cache
    files from anywhere on the machine, and this is checked before any file is read.
    """
    path = Path(path)
    columns, records = read_patient_table(path, REQUIRED_COLUMNS, "manifest")
    patients, problems, seen, width = [], [], {}, len(columns)
    for number, fields in enumerate(records, start=1):
        row = dict(zip(columns, (fields + [""] * width)[:width], strict=True))  # short rows: empty fields
        where = f"{path}, row {number} (patient_id {row['patient_id'] or '?'})"
        if any(fields[width:]):  # the columns are shifted: every other check would mislead
            problems.append(f"{where}: {len(fields)} fields, the header has {width}")
            continue
        errors = _row_errors(row, path.parent, seen, allow_outside)
        if errors:
            problems.extend(f"{where}, column {column}: {reason}" for column, reason in errors)
            continue
        seen[row["patient_id"]] = number
        patients.append(_patient(row, path.parent))
    if problems and not skip_bad:
        raise InputError(f"{len(problems)} problem(s) in the manifest:\n" + "\n".join(problems))
    if not patients:
        raise InputError(f"{path}: no usable patient rows:\n" + "\n".join(problems))
    return Cohort(manifest=path, patients=patients, problems=problems)


def read_patient_table(path: Path, required, what: str) -> tuple[list[str], list[list[str]]]:
    """A table of one row per patient (the manifest, an import's labels): header and rows, refused when the
    file, a required column or any row is missing, or a column is named twice."""
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    columns, records = read_table(path)
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputError(f"{path}: missing required column(s) {', '.join(missing)}; "
                         f"found {', '.join(columns) or 'no header'}")
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:
        raise InputError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header; "
                         "keep one of each")
    if not records:
        raise InputError(f"{path}: has a header but no patients")
    return columns, records


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the non-blank rows, fields stripped; rows keep their own length."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            lines = [[value.strip() for value in line] for line in csv.reader(handle) if line]
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from error
    return (lines[0], lines[1:]) if lines else ([], [])


def identity_errors(row: dict, seen: dict) -> list[tuple[str, str]]:
    """(column, reason) for a row's patient_id (plain, not used before: `seen` id -> row) and label."""
    errors = []
    pid = row["patient_id"]
    if not PATIENT_ID.match(pid):
        errors.append(("patient_id", f"{pid!r} is empty or not a plain id "
                       "(letters, digits, '.', '_', '-'; at most 64 characters)"))
    elif pid in seen:
        errors.append(("patient_id", f"{pid!r} already used in row {seen[pid]}"))
    if row["label"].lower() not in LABELS:
        errors.append(("label", f"{row['label']!r} is not one of {', '.join(LABELS)}"))
    return errors


def _row_errors(row: dict, folder: Path, seen: dict, allow_outside: bool) -> list[tuple[str, str]]:
    errors = identity_errors(row, seen)
    errors += _path_errors("ct", row["ct"], folder, allow_outside, ct=True)
    errors += _path_errors("roi", row["roi"], folder, allow_outside)
    if row.get("roi_label") and not ROI_LABEL.fullmatch(row["roi_label"]):
        errors.append(("roi_label", f"{row['roi_label']!r} is not a whole number from 1 to 999999999"))
    for column, value in row.items():
        if column.startswith("feature_") and value not in ("", "0", "1"):
            errors.append((column, f"{value!r} should be 0, 1 or empty"))
        elif column.startswith("reader_") and value and value.lower() not in LABELS:
            errors.append((column, f"{value!r} should be benign, malignant or empty"))
        elif column.startswith("mask_") and value:
            errors += _path_errors(column, value, folder, allow_outside)
    return errors


def _path_errors(column: str, value: str, folder: Path, allow_outside: bool,
                 ct: bool = False) -> list[tuple[str, str]]:
    if not value:
        return [(column, "is empty")]
    path = folder / value
    if not allow_outside and (outside := _outside(value, folder)):
        return [(column, outside)]
    if not path.exists():
        return [(column, f"{value} does not exist (relative to {folder})")]
    if ct and not (path.is_dir() or is_nifti(path) or path.suffix.lower() in ("", ".dcm")):
        return [(column, f"{value} should be a DICOM series folder, a DICOM file or .nii/.nii.gz")]
    if not ct and not str(path).lower().endswith(MASK_SUFFIXES):
        return [(column, f"{value} should be a .nii, .nii.gz, .nrrd (.seg.nrrd), .dcm (DICOM SEG or RTSTRUCT) "
                         "or .npy mask")]
    return []


def _outside(value: str, folder: Path) -> str:
    """Why the manifest path `value` may not be used (it leaves `folder` once resolved), or ''."""
    try:
        resolved, root = (folder / value).resolve(), folder.resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop
        return f"{value} cannot be resolved ({error})"
    if resolved.is_relative_to(root):
        return ""
    return (f"{value} resolves to {resolved}, outside the cohort folder {root}; "
            "paths must stay inside it unless --allow-outside is given")


def _patient(row: dict, folder: Path) -> Patient:
    def named(prefix):
        return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and v}

    return Patient(
        patient_id=row["patient_id"],
        label=row["label"].lower(),
        ct=folder / row["ct"],
        roi=folder / row["roi"],
        roi_label=int(row["roi_label"]) if row.get("roi_label") else None,
        features={k: int(v) for k, v in named("feature_").items()},
        masks={k: folder / v for k, v in named("mask_").items()},
        readers={k: v.lower() for k, v in named("reader_").items()},
        vertebra=(row.get("vertebra") or "").strip(), centre=(row.get("centre") or "").strip(),
    )
