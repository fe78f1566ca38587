"""Vertebra levels and the label ids segmenters give them, and where a level's ROI is.

A user names the fractured level (`L1`); TotalSegmentator and VerSe each store it
under their own id. These are the only tables that translate, so a manifest, an
import and a prediction agree on which voxels are "L1".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfrac.errors import InputError
from vfrac.io.nifti import is_nifti, read_nifti

# A level as written by people: a region letter and a number, nothing else (after strip and upper-casing).
LEVEL = re.compile(r"([CTLS])([1-9][0-9]?)")


@dataclass(frozen=True)
class Scheme:
    """One segmenter's level -> label id table, levels in anatomical order (head to feet)."""

    name: str
    ids: dict[str, int]

    def level(self, name: str) -> str:
        """The canonical level (`' l1 '` -> `L1`); InputError says which names this scheme knows."""
        level = name.strip().upper()
        if LEVEL.fullmatch(level) and level in self.ids:
            return level
        raise InputError(f"{name!r} is not a vertebra level of {self.name}; valid levels: {self.describe()}")

    def id(self, name: str) -> int:
        return self.ids[self.level(name)]

    def levels_of(self, values) -> list[str]:
        """The levels among label values, in anatomical order (for messages)."""
        present = {int(v) for v in values}
        return [level for level, label in self.ids.items() if label in present]

    def describe(self) -> str:
        """The valid levels as ranges, e.g. `C1-C7, T1-T12, L1-L5, S1`."""
        regions: dict[str, list[int]] = {}
        for level in self.ids:
            regions.setdefault(level[0], []).append(int(level[1:]))
        return ", ".join(f"{r}{min(n)}-{r}{max(n)}" if len(n) > 1 else f"{r}{n[0]}"
                         for r, n in sorted(regions.items(), key=lambda item: "CTLS".index(item[0])))


def _levels(region: str, count: int, first_id: int, step: int) -> dict[str, int]:
    return {f"{region}{n}": first_id + step * (n - 1) for n in range(1, count + 1)}


# TotalSegmentator v2, task "total": C1 = 50 down to L5 = 27 and S1 = 26 (v1 numbered differently).
TOTALSEGMENTATOR = Scheme("TotalSegmentator's total task",
                          _levels("C", 7, 50, -1) | _levels("T", 12, 43, -1) | _levels("L", 5, 31, -1) | {"S1": 26})
# VerSe: 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 28 a transitional T13.
VERSE = Scheme("VerSe", _levels("C", 7, 1, 1) | _levels("T", 12, 8, 1) | {"T13": 28} | _levels("L", 6, 20, 1))
# TotalSegmentator's per-structure output: one file per structure, written even when empty.
STRUCTURE_FILE = "vertebrae_{level}.nii.gz"


def totalsegmentator_roi(segmentation: Path, vertebra: str) -> tuple[Path, int | None]:
    """Where `vertebra`'s ROI is in a TotalSegmentator output: (mask file, roi_label or None).

    `segmentation` is either a multi-label map (`--ml`, .nii/.nii.gz with the total task's
    ids; the level's id is returned) or the folder of per-structure masks (its
    `vertebrae_<level>.nii.gz` is returned with None). The level must be segmented there:
    a missing or empty ROI is an InputError now rather than a failed crop later.
    """
    segmentation = Path(segmentation)
    try:
        level = TOTALSEGMENTATOR.level(vertebra)
    except InputError as error:
        raise InputError(f"{segmentation}: {error}") from None
    if segmentation.is_dir():
        return _structure_mask(segmentation, level), None
    if not segmentation.exists():
        raise InputError(f"{segmentation}: no such file or folder")
    if not is_nifti(segmentation):
        raise InputError(f"{segmentation}: a TotalSegmentator output is a folder of per-structure masks "
                         "or a .nii/.nii.gz multi-label map")
    label = TOTALSEGMENTATOR.ids[level]
    _require_label(segmentation, label, level, TOTALSEGMENTATOR, label_values(segmentation), "map")
    return segmentation, label


def verse_roi(mask: Path, vertebra: str, centroids: Path | None = None) -> int:
    """The roi_label of `vertebra` in a VerSe vertebra mask, checked to be there.

    The centroid file (`..._seg-subreg_ctd.json`) lists the labelled vertebrae, so when
    it is given it answers without reading the mask.
    """
    level = VERSE.level(vertebra)
    label = VERSE.ids[level]
    if centroids is not None:
        _require_label(centroids, label, level, VERSE, _centroid_labels(centroids), "centroid file")
    else:
        _require_label(mask, label, level, VERSE, label_values(mask), "mask")
    return label


def label_values(path: Path) -> np.ndarray:
    """The distinct voxel values of a NIfTI label map (0 included when present)."""
    data, _ = read_nifti(Path(path), dtype=None)  # vfrac's reader: budget checked, InputError on damage
    return np.unique(data)


def _structure_mask(folder: Path, level: str) -> Path:
    """`folder`'s mask of `level`, refused when missing or empty."""
    path = folder / STRUCTURE_FILE.format(level=level)
    if not path.is_file():
        there = [lv for lv in TOTALSEGMENTATOR.ids if (folder / STRUCTURE_FILE.format(level=lv)).is_file()]
        holds = (f"it holds masks of {', '.join(there)}" if there else
                 "it holds no vertebrae_*.nii.gz mask: is it the output folder of TotalSegmentator's total task?")
        raise InputError(f"{folder}: no {path.name} for {level}; {holds}")
    if not np.any(label_values(path)):
        raise InputError(f"{path}: the {level} mask is empty: TotalSegmentator found no {level} in this CT "
                         "(outside the field of view?)")
    return path


def _require_label(path: Path, label: int, level: str, scheme: Scheme, values, what: str) -> None:
    """Refuse when `label` is not among `values`, saying which levels `path` does hold."""
    if label in {int(v) for v in values}:
        return
    there = scheme.levels_of(values)
    if there:
        holds = f"it holds {', '.join(there)} ({scheme.name} ids {', '.join(str(scheme.ids[lv]) for lv in there)})"
    else:
        found = [str(int(v)) for v in values if v][:10]
        holds = f"it holds no vertebra of {scheme.name} (labels found: {', '.join(found) or 'none'})"
    raise InputError(f"{path}: no {level} (label {label}) in this {what}; {holds}")


def _centroid_labels(path: Path) -> list[int]:
    """The vertebra labels a VerSe centroid file lists: `[{"direction": ...}, {"label": 20, "X": ...}, ...]`."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
        return [int(item["label"]) for item in items if isinstance(item, dict) and "label" in item]
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
        raise InputError(f"{path}: not a VerSe centroid file ({error})") from error
