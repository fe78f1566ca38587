"""Write small but valid CT DICOM files with pydicom, as a scanner would, for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _base(sop_class, series_uid, stored: np.ndarray) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-123456"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    return ds


def ct_slice(stored, position, orientation=AXIAL, spacing=(0.5, 0.5), slope=1.0,
             intercept=-1024.0, series_uid="1.2.3.4", series_number=1,
             description="AX BONE", instance=1, image_type=("ORIGINAL", "PRIMARY", "AXIAL")) -> Dataset:
    """One CT Image Storage dataset with the given stored values (int16, 2-D)."""
    ds = _base(CTImageStorage, series_uid, np.asarray(stored))
    ds.ImageType = list(image_type)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 2.0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    return ds


def slice_positions(count, dz=2.0, origin=(-64.0, -80.0, 100.0), orientation=AXIAL):
    normal = np.cross(orientation[:3], orientation[3:])
    return [np.asarray(origin) + k * dz * normal for k in range(count)]


def write_series(folder: Path, stored: np.ndarray, dz=2.0, origin=(-64.0, -80.0, 100.0),
                 orientation=AXIAL, names=None, **kwargs) -> list[Path]:
    """Write stored[z] as one file per slice; returns the paths in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for z, position in enumerate(slice_positions(len(stored), dz, origin, orientation)):
        path = folder / (names[z] if names else f"IM{z:04d}.dcm")
        ds = ct_slice(stored[z], position, orientation, instance=z + 1, **kwargs)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced(path: Path, stored: np.ndarray, order, dz=2.0, spacing=(0.5, 0.5),
                   slopes=None, intercept=-1024.0) -> Path:
    """A multi-frame Enhanced CT holding stored[order[i]] as frame i."""
    ds = _base(EnhancedCTImageStorage, generate_uid(), stored[list(order)])
    ds.NumberOfFrames = len(order)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    measures.PixelSpacing = list(spacing)
    measures.SliceThickness = dz
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    positions = slice_positions(len(stored), dz)
    frames = []
    for z in order:
        frame, plane, rescale = Dataset(), Dataset(), Dataset()
        plane.ImagePositionPatient = [float(v) for v in positions[z]]
        rescale.RescaleSlope = slopes[z] if slopes is not None else 1.0
        rescale.RescaleIntercept = intercept
        rescale.RescaleType = "HU"
        frame.PlanePositionSequence = Sequence([plane])
        frame.PixelValueTransformationSequence = Sequence([rescale])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(path, enforce_file_format=True)
    return path
