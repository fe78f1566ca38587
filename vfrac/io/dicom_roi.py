"""ROIs as hospitals store them in DICOM: a Segmentation (SEG) or an RT Structure Set (RTSTRUCT).

A SEG holds voxels on its own grid (read with highdicom, placed on the CT by its
geometry, exactly, as a NIfTI mask is). An RTSTRUCT holds closed planar contours in
patient millimetres: a CT voxel belongs to the ROI when its centre lies inside the
contours of its slice (even-odd rule, so a contour inside another is a hole, as the
standard's contours of a vertebra around its canal are). A contour that does not lie on
a slice of the CT, or reaches outside it, is refused: the two do not describe the same
patient space. `label` picks a segment number (SEG) or an ROI number (RTSTRUCT); the
result carries that number in its voxels, as a multi-label NIfTI would.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from vfrac.errors import InputError
from vfrac.io.budget import check_voxel_budget
from vfrac.io.grid import place_on_grid

MODALITIES = ("SEG", "RTSTRUCT")
ON_SLICE = 0.05  # a contour point may lie this far (in slices) from a CT slice's plane


def dicom_modality(path: Path) -> str | None:
    """The Modality of a DICOM file, None when the file is not DICOM."""
    try:  # force: RT files of older planning systems often lack the preamble
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"], force=True)
        return str(dataset.get("Modality", "")) or None
    except (InvalidDicomError, OSError, ValueError):
        return None


def read_dicom_roi(path: Path, reference, label: int | None = None) -> np.ndarray:
    """The ROI of a SEG or RTSTRUCT file on the reference Volume's grid (uint16 labels)."""
    modality = dicom_modality(path)
    if modality == "SEG":
        return _segmentation(path, reference, label)
    if modality == "RTSTRUCT":
        return _structure_set(path, reference, label)
    raise InputError(f"{path}: a DICOM ROI must be a SEG or an RTSTRUCT, this file's Modality is {modality!r}")


# -- SEG ------------------------------------------------------------------------------------

def _segmentation(path: Path, reference, label: int | None) -> np.ndarray:
    import highdicom as hd  # here: it takes about a second to import, and only SEG files need it

    try:
        with _quiet_highdicom():  # its warnings quote the file's UIDs
            seg = hd.seg.segread(path)
    except Exception as error:  # highdicom raises many types for malformed objects
        raise InputError(f"{path}: cannot be read as a DICOM SEG ({type(error).__name__})") from error
    numbers = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    listed = ", ".join(f"{n} {name!r}" for n, name in sorted(numbers.items()))
    if label is not None and label not in numbers:
        raise InputError(f"{path}: no segment number {label}; it holds {listed}")
    chosen = [label] if label is not None else sorted(numbers)
    with _quiet_highdicom():
        geometry = seg.get_volume_geometry()
    if geometry is None:
        raise InputError(f"{path}: its frames do not form one regular volume (uneven or missing positions)")
    # what get_volume allocates: every position of the volume, once per chosen segment
    check_voxel_budget(path, (*geometry.spatial_shape, len(chosen)))
    try:
        with _quiet_highdicom():
            volume = seg.get_volume(segment_numbers=chosen, combine_segments=False, dtype=np.float32)
    except (ValueError, RuntimeError) as error:
        raise InputError(f"{path}: its frames do not form one regular volume ({error})") from error
    present = np.asarray(volume.array) >= 0.5  # binary: 0/1; fractional: half or more of the voxel
    if present.ndim == 3:
        present = present[..., None]
    if label is None and np.any(present.sum(axis=-1) > 1):
        raise InputError(f"{path}: its segments overlap; as the roi, say which with a roi_label column "
                         f"(experiments.predict: --roi-label); as a feature mask, export one segment: {listed}")
    labels = (present * np.asarray(chosen, np.uint16)).sum(axis=-1, dtype=np.uint16)
    return place_on_grid(labels, np.asarray(volume.affine, float), reference, source=path)


@contextmanager
def _quiet_highdicom():
    """highdicom's log lines quote SOP Instance UIDs: none may reach the console (docs/architecture.md, privacy)."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(logging.ERROR + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- RTSTRUCT -------------------------------------------------------------------------------

def _structure_set(path: Path, reference, label: int | None) -> np.ndarray:
    dataset = pydicom.dcmread(path, force=True)
    names = {int(r.ROINumber): str(r.get("ROIName", "")) for r in dataset.get("StructureSetROISequence", [])}
    contours = {int(r.ReferencedROINumber): [c for c in r.get("ContourSequence", [])
                                             if c.get("ContourGeometricType") == "CLOSED_PLANAR"]
                for r in dataset.get("ROIContourSequence", [])}
    areas = {number: found for number, found in contours.items() if found}
    listed = ", ".join(f"{n} {names.get(n, '')!r}" for n in sorted(areas)) or "none"
    if label is None:
        if len(areas) != 1:
            raise InputError(f"{path}: {len(areas)} ROIs with closed contours ({listed}); as the roi, say which with "
                             "a roi_label column (experiments.predict: --roi-label), its ROI number; as a feature "
                             "mask, export that ROI alone")
        (label,) = areas
    if label not in areas:
        raise InputError(f"{path}: ROI number {label} has no closed planar contour; ROIs with one: {listed}")
    inside = rasterise(areas[label], reference, f"{path}, ROI {label} {names.get(label, '')!r}")
    return inside.astype(np.uint16) * np.uint16(label)


def rasterise(contours, reference, source: str) -> np.ndarray:
    """(z, y, x) booleans: voxels whose centre lies inside the closed planar contours (even-odd per slice)."""
    from matplotlib.path import Path as Polygon  # here: matplotlib takes a quarter second, only RTSTRUCTs need it

    to_voxel = np.linalg.inv(reference.affine)
    inside = np.zeros(reference.shape, bool)
    for contour in contours:
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)
        if len(points) < 3:
            raise InputError(f"{source}: a closed contour with {len(points)} point(s)")
        zyx = (to_voxel @ np.c_[points, np.ones(len(points))].T)[:3].T
        z = np.rint(zyx[:, 0])
        if np.ptp(z) > 0 or np.max(np.abs(zyx[:, 0] - z)) > ON_SLICE:
            raise InputError(f"{source}: a contour at slice position {zyx[:, 0].mean():.2f} does not lie on one of "
                             "the CT's slices; the ROI was not drawn on this CT's grid")
        z, first, last, size = int(z[0]), zyx[:, 1:].min(axis=0), zyx[:, 1:].max(axis=0), np.array(reference.shape[1:])
        if not 0 <= z < reference.shape[0] or np.any(first < -0.5) or np.any(last > size - 0.5):
            raise InputError(f"{source}: a contour reaches outside the CT's field of view (slice {z}, rows and "
                             f"columns {np.round(first, 1).tolist()} to {np.round(last, 1).tolist()}, CT "
                             f"{list(reference.shape)})")
        low, high = np.maximum(np.ceil(first).astype(int), 0), np.minimum(np.floor(last).astype(int), size - 1)
        rows, cols = np.mgrid[low[0]:high[0] + 1, low[1]:high[1] + 1]
        centres = np.c_[rows.ravel(), cols.ravel()]
        hit = Polygon(zyx[:, 1:]).contains_points(centres).reshape(rows.shape)
        inside[z, low[0]:high[0] + 1, low[1]:high[1] + 1] ^= hit  # even-odd: a contour within another is a hole
    if not inside.any():
        raise InputError(f"{source}: its contours enclose no voxel centre of the CT")
    return inside
