"""Write a synthetic patient as a hospital exports one: a CT DICOM series and NIfTI masks.

UIDs are derived from the seed and patient, so the same seed writes the same bytes.
The fake patient name and hospital number in the headers differ from the manifest's
pseudonymous id, so that privacy checks downstream have something to catch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from vfrac.data.window import BONE_WINDOW
from vfrac.io.nifti import write_nifti
from vfrac.synth.anatomy import Rendered
from vfrac.synth.params import Scan

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"


def ct_affine(scan: Scan) -> np.ndarray:
    """(z, y, x, 1) voxel -> patient LPS mm, as the DICOM headers will say."""
    n, p = scan.matrix, scan.pixel_spacing
    corner = -(n - 1) / 2 * p
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, scan.slice_spacing)
    affine[:3, 1] = (0.0, p, 0.0)
    affine[:3, 2] = (p, 0.0, 0.0)
    affine[:3, 3] = (corner, corner, scan.table_z + scan.z_start)
    return affine


def write_series(folder: Path, scan: Scan, hu: np.ndarray, key: str) -> None:
    """One CT Image Storage file per slice, stored as HU + 1024 with intercept -1024."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = ct_affine(scan)
    study, series = (generate_uid(entropy_srcs=[key, part]) for part in ("study", "series"))
    frame_of_reference = generate_uid(entropy_srcs=[key, "frame"])
    stored = (hu.astype(np.int32) + 1024).astype(np.int16 if scan.signed_storage else np.uint16)
    count = len(hu)
    for k in range(count):
        instance = k + 1 if scan.ascending_instances else count - k
        ds = _slice_header(scan, key, study, series, frame_of_reference, instance)
        ds.ImagePositionPatient = [round(float(c), 4) for c in affine[:3, 3] + k * affine[:3, 0]]
        ds.SliceLocation = round(float(ds.ImagePositionPatient[2]), 4)
        ds.PixelData = np.ascontiguousarray(stored[k]).astype(stored.dtype.newbyteorder("<")).tobytes()
        ds.save_as(folder / f"IM{instance:05d}.dcm", enforce_file_format=True)


def _slice_header(scan, key, study, series, frame_of_reference, instance) -> Dataset:
    header = scan.header
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[key, "instance", str(instance)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = header["StudyDate"]
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.AccessionNumber = header["AccessionNumber"]
    ds.Modality = "CT"
    ds.Manufacturer = header["Manufacturer"]
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "REFERRER^DOCTOR"
    ds.StudyDescription = "CT THORACOLUMBAR SPINE"
    ds.SeriesDescription = f"AX BONE {scan.slice_thickness:.1f}"
    ds.ManufacturerModelName = header["ManufacturerModelName"]
    ds.PatientName = header["PatientName"]
    ds.PatientID = header["PatientID"]
    ds.PatientBirthDate = header["PatientBirthDate"]
    ds.PatientSex = header["PatientSex"]
    ds.BodyPartExamined = "SPINE"
    ds.SliceThickness = round(scan.slice_thickness, 3)
    ds.KVP = header["KVP"]
    ds.ConvolutionKernel = header["ConvolutionKernel"]
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = header["SeriesNumber"]
    ds.AcquisitionNumber = 1  # Type 2 in the CT Image module: one helical acquisition per series
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = scan.matrix
    ds.PixelSpacing = [round(scan.pixel_spacing, 6)] * 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = int(scan.signed_storage)
    ds.WindowCenter, ds.WindowWidth = (int(v) for v in BONE_WINDOW)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    return ds


def write_masks(folder: Path, scan: Scan, rendered: Rendered) -> dict[str, Path]:
    """The ROI on the CT's full grid; feature masks on the spine patch with their own affine."""
    affine = ct_affine(scan)
    full = np.zeros(rendered.hu.shape, np.uint8)
    row, col = rendered.origin
    h, w = rendered.roi.shape[1:]
    full[:, row:row + h, col:col + w] = rendered.roi
    paths = {"roi": write_nifti(folder / "roi.nii.gz", full, affine)}
    shift = np.eye(4)
    shift[1, 3], shift[2, 3] = row, col
    for name, mask in rendered.masks.items():
        paths[name] = write_nifti(folder / f"mask_{name}.nii.gz", mask, affine @ shift)
    return paths


