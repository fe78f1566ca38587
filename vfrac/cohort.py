"""The cohort manifest: one row per patient, checked before any CT is opened.

Every problem is reported with the manifest, the row, the column and the reason, all
at once, so a user fixes a spreadsheet in one pass rather than one error per run.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from vfrac.errors import InputError
from vfrac.volume import MASK_SUFFIXES, is_nifti

REQUIRED_COLUMNS = ("patient_id", "label", "ct", "roi")
LABELS = ("benign", "malignant")
# Pseudonymous ids end up in file names, so they must be plain.
PATIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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

    @property
    def is_malignant(self) -> bool:
        return self.label == "malignant"


@dataclass(frozen=True)
class Cohort:
    manifest: Path
    patients: list[Patient]
    problems: list[str]  # rows left out with skip_bad=True, one message each


def read_manifest(path, skip_bad: bool = False) -> Cohort:
    """Read and validate a manifest; bad rows raise, or with `skip_bad` are listed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from error
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"{path}: missing required column(s) {', '.join(missing)}; "
                         f"found {', '.join(columns) or 'no header'}")
    if not rows:
        raise InputError(f"{path}: has a header but no patients")
    patients, problems, seen = [], [], {}
    for number, row in enumerate(rows, start=1):
        errors = _row_errors(row, path.parent, seen)
        where = f"{path}, row {number} (patient_id {row['patient_id'] or '?'})"
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


def _row_errors(row: dict, folder: Path, seen: dict) -> list[tuple[str, str]]:
    errors = []
    pid = row["patient_id"]
    if not PATIENT_ID.match(pid):
        errors.append(("patient_id", f"{pid!r} is empty or not a plain id "
                       "(letters, digits, '.', '_', '-'; at most 64 characters)"))
    elif pid in seen:
        errors.append(("patient_id", f"{pid!r} already used in row {seen[pid]}"))
    if row["label"].lower() not in LABELS:
        errors.append(("label", f"{row['label']!r} is not one of {', '.join(LABELS)}"))
    errors += _path_errors("ct", row["ct"], folder, ct=True)
    errors += _path_errors("roi", row["roi"], folder)
    if row.get("roi_label") and not row["roi_label"].isdigit():
        errors.append(("roi_label", f"{row['roi_label']!r} is not a whole number"))
    for column, value in row.items():
        if column.startswith("feature_") and value not in ("", "0", "1"):
            errors.append((column, f"{value!r} should be 0, 1 or empty"))
        elif column.startswith("reader_") and value and value.lower() not in LABELS:
            errors.append((column, f"{value!r} should be benign, malignant or empty"))
        elif column.startswith("mask_") and value:
            errors += _path_errors(column, value, folder)
    return errors


def _path_errors(column: str, value: str, folder: Path, ct: bool = False) -> list[tuple[str, str]]:
    if not value:
        return [(column, "is empty")]
    path = folder / value
    if not path.exists():
        return [(column, f"{value} does not exist (relative to {folder})")]
    if ct and not (path.is_dir() or is_nifti(path) or path.suffix.lower() in ("", ".dcm")):
        return [(column, f"{value} should be a DICOM series folder, a DICOM file or .nii/.nii.gz")]
    if not ct and not str(path).lower().endswith(MASK_SUFFIXES):
        return [(column, f"{value} should be a .nii, .nii.gz or .npy mask")]
    return []


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
    )
