"""Overlays as a DICOM Secondary Capture series, to open in a PACS viewer beside the CT.

By default every UID is new and the only patient identity written is the pseudonymous
id (as PatientName and PatientID): nothing is copied from the original headers. Given
the source study (explain.source_study, `--dicom-output study`), the series is a new
series of the CT's own study, with its patient, and each image names its CT slice.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

# Type 2 attributes of the Secondary Capture IOD that a pseudonymous object has no value for (dciodvfy
# reports each one absent as an error). Laterality is not among them: the body part, the spine, is unpaired.
TYPE_2_EMPTY = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                "PatientOrientation")
BODY_PART = "SPINE"


def write_series(folder: Path, patient_id: str, images: list[tuple[str, np.ndarray]],
                 description: str = "vfrac attention overlays", source=None, slices=None) -> list[Path]:
    """One file per (title, BGR uint8 image), all in one new series: of a new study, or of the CT's study
    when `source` (a SourceStudy) is given, with `slices` the CT slice each image shows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    now = datetime.datetime.now()
    paths = []
    for number, (title, bgr) in enumerate(images, start=1):
        rgb = np.ascontiguousarray(np.asarray(bgr, dtype=np.uint8)[..., ::-1])
        ds = _dataset(patient_id, study, series, number, title, rgb, now, description)
        if source is not None:
            source.stamp(ds)
            ds.SourceImageSequence = [source.reference(slices[number - 1])]
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _dataset(patient_id, study, series, number, title, rgb, now, description) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName = f"{patient_id}^"  # the id as a family name: a name of one component is a retired form
    ds.PatientID = patient_id
    ds.BodyPartExamined = BODY_PART
    for name in TYPE_2_EMPTY:  # required to be present, and known here to be nothing: present and empty
        setattr(ds, name, "")
    ds.Modality = "OT"
    ds.ConversionType = "WSD"  # workstation
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.SeriesDescription = description
    ds.ImageComments = title
    ds.DerivationDescription = "vfrac class-activation map over CT; not for diagnosis"
    ds.BurnedInAnnotation = "YES"  # the caption: pseudonymous id, probability, method
    ds.SeriesNumber = 9001
    ds.InstanceNumber = number
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    return ds

