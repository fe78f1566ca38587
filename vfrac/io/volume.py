"""Load a CT and its ROI mask, whatever form each comes in: one entry point per kind, the reader
chosen by the file.

A CT is a DICOM series folder or file (vfrac.io.series) or a NIfTI file (vfrac.io.nifti).
A mask is NIfTI, NRRD (3D Slicer's `.seg.nrrd` or a labelmap; vfrac.io.nrrd), DICOM SEG or
RTSTRUCT (`.dcm`; vfrac.io.dicom_roi) or `.npy`; every reader returns it on the CT's grid
(vfrac.io.grid), with (z, y, x) axes and the affine to patient LPS millimetres.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vfrac.errors import InputError
from vfrac.io.dicom_roi import read_dicom_roi
from vfrac.io.grid import Volume, place_on_grid
from vfrac.io.nifti import NIFTI_SUFFIXES, is_nifti, read_nifti, read_npy_mask
from vfrac.io.nrrd import read_nrrd_mask
from vfrac.io.series import read_dicom

MASK_SUFFIXES = NIFTI_SUFFIXES + (".npy", ".nrrd", ".dcm")  # .nrrd: also 3D Slicer's .seg.nrrd; .dcm: SEG, RTSTRUCT


def load_volume(path, series=None) -> Volume:
    """Load a CT from a DICOM series folder, a DICOM file or a NIfTI file.

    `series` picks one series (SeriesNumber, SeriesDescription or
    SeriesInstanceUID) when a DICOM folder holds several.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file() and is_nifti(path):
        if series is not None:
            raise InputError(f"{path}: series= picks a DICOM series; a NIfTI file holds one volume")
        hu, affine = read_nifti(path, dtype=np.float32)
        return Volume(hu=hu, affine=affine)
    hu, affine = read_dicom(path, series=series)
    return Volume(hu=hu, affine=affine)


def _nrrd_mask(path: Path, reference: Volume, label) -> np.ndarray:
    mask, affine = read_nrrd_mask(path)
    return place_on_grid(mask, affine, reference, source=path)


def _nifti_mask(path: Path, reference: Volume, label) -> np.ndarray:
    mask, affine = read_nifti(path, dtype=None)
    return place_on_grid(mask, affine, reference, source=path)


# The mask reader of each file kind: (path, reference CT, label) -> the mask on the CT's grid.
MASK_READERS = {
    ".npy": lambda path, reference, label: read_npy_mask(path, reference.shape),
    ".nrrd": _nrrd_mask,
    ".dcm": read_dicom_roi,
    ".nii": _nifti_mask,
    ".nii.gz": _nifti_mask,
}


def load_mask(path, reference: Volume, label: int | None = None) -> np.ndarray:
    """Read a NIfTI, NRRD (3D Slicer's `.seg.nrrd` or labelmap), DICOM SEG or RTSTRUCT (`.dcm`) or .npy mask and
    return it on the reference CT's grid.

    Label values are kept (a multi-label file stays multi-label); in a DICOM SEG or RTSTRUCT
    `label` picks the segment or ROI number (vfrac.io.dicom_roi), which the voxels then carry. A `.npy` file has
    no geometry, so it must already have the reference's (z, y, x) shape. A NIfTI or
    NRRD mask may differ by axis order, flips and a whole-voxel offset (a cropped mask);
    anything else means the two grids do not describe the same voxels and is an
    `InputError`, since resampling a mask silently would move the ROI.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mask file does not exist")
    kind = next((suffix for suffix in MASK_READERS if str(path).lower().endswith(suffix)), None)
    if kind is None:
        raise InputError(f"{path}: a mask must be .nii, .nii.gz, .nrrd (.seg.nrrd), .dcm (DICOM SEG or RTSTRUCT) "
                         "or .npy")
    return MASK_READERS[kind](path, reference, label)
