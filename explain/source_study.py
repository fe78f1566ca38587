"""The source CT's patient and study, for the DICOM objects a PACS files with the CT (`--dicom-output study`).

Research outputs name the patient by the pseudonymous id only. Objects written for the
hospital's PACS are derived objects like any other: they carry the CT's own patient and
study modules, so the PACS files them with the CT, and reference the CT's instances.
They are written only where the user asks (experiments.predict's --out, or sent back to
the PACS), never logged to MLflow or the review.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from vfrac.errors import InputError

# What filing an object with the CT's study and referencing its images takes.
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
# Patient and General Study attributes copied from the CT (absent ones are written empty: all are Type 2 or 1).
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


@dataclass(frozen=True)
class SourceStudy:
    """The CT series' headers, one per slice of the volume read from it (index = the volume's z)."""

    headers: tuple

    @classmethod
    def read(cls, folder: Path, affine: np.ndarray) -> SourceStudy:
        """The headers of the CT series in `folder`, ordered as the volume of `affine` orders its slices."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder}: --dicom-output study needs the CT as a DICOM series (a folder), "
                             "to file its outputs with the CT's study")
        step = np.asarray(affine, float)[:3, 0]
        origin = np.asarray(affine, float)[:3, 3]
        by_slice = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not DICOM: the readers skipped it too
                continue
            if "ImagePositionPatient" not in header or "SOPInstanceUID" not in header:
                continue
            z = int(round(float(np.dot(np.asarray(header.ImagePositionPatient, float) - origin, step))
                          / float(np.dot(step, step))))
            by_slice.setdefault(z, header)
        if sorted(by_slice) != list(range(len(by_slice))) or not by_slice:
            raise InputError(f"{folder}: the CT's instances do not map one to one onto its slices")
        headers = tuple(by_slice[z] for z in range(len(by_slice)))
        missing = sorted({name for header in headers for name in REQUIRED if not header.get(name)})
        if missing:
            raise InputError(f"{folder}: the CT's headers lack {', '.join(missing)}, so outputs cannot be filed "
                             "with its study; use --dicom-output pseudonymous")
        return cls(headers)

    def stamp(self, dataset: Dataset) -> Dataset:
        """`dataset` given the CT's patient and study."""
        first = self.headers[0]
        for name in PATIENT_STUDY:
            setattr(dataset, name, first.get(name, ""))
        return dataset

    def reference(self, z: int) -> Dataset:
        """An item naming slice z's CT instance (for a Source Image Sequence)."""
        item = Dataset()
        item.ReferencedSOPClassUID = self.headers[z].SOPClassUID
        item.ReferencedSOPInstanceUID = self.headers[z].SOPInstanceUID
        return item
