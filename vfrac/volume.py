"""One CT as HU voxels plus the geometry that places them in the patient.

Axes are always (z, y, x) = (slice, row, column) with z rising along the slice
normal, and the affine maps (z, y, x, 1) voxel indices to patient LPS millimetres,
whether the CT came as a DICOM series or as NIfTI. Masks are placed on a CT by the
two geometries, never by assuming matching array layouts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfrac.errors import InputError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MASK_SUFFIXES = NIFTI_SUFFIXES + (".npy",)
# Grids whose voxel centres agree within this fraction of a voxel are the same grid.
GRID_TOLERANCE = 0.05
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# NIfTI voxel (i, j, k) is our (x, y, z): this swaps the index order.
IJK_FROM_ZYX = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)


@dataclass(frozen=True)
class Volume:
    """HU voxels with axes (z, y, x) and the 4 x 4 affine to patient LPS mm."""

    hu: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (dz, dy, dx) in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)


def is_nifti(path: Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


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
            raise ValueError(f"{path}: series= picks a DICOM series; a NIfTI file holds one volume")
        hu, affine = _read_nifti(path, dtype=np.float32)
        return Volume(hu=hu, affine=affine)
    from vfrac.dicom import read_dicom

    hu, affine = read_dicom(path, series=series)
    return Volume(hu=hu, affine=affine)


def load_mask(path, reference: Volume) -> np.ndarray:
    """Read a NIfTI or .npy mask and return it on the reference CT's grid.

    Label values are kept (a multi-label file stays multi-label). A `.npy` file has
    no geometry, so it must already have the reference's (z, y, x) shape. A NIfTI
    mask may differ by axis order, flips and a whole-voxel offset (a cropped mask);
    anything else means the two grids do not describe the same voxels and is an
    `InputError`, since resampling a mask silently would move the ROI.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mask file does not exist")
    if str(path).lower().endswith(".npy"):
        mask = _read_npy(path)
        if mask.shape != reference.shape:
            raise InputError(
                f"{path}: .npy mask has shape {mask.shape}, but the CT is "
                f"{reference.shape} (z, y, x); a .npy mask carries no geometry, so it "
                "must be on the CT's grid (or save it as NIfTI with its affine)"
            )
        return mask
    if not is_nifti(path):
        raise InputError(f"{path}: a mask must be .nii, .nii.gz or .npy")
    mask, affine = _read_nifti(path, dtype=None)
    return place_on_grid(mask, affine, reference, source=path)


def place_on_grid(
    mask: np.ndarray, affine: np.ndarray, reference: Volume, source="mask"
) -> np.ndarray:
    """Reorder `mask` (with its own affine) onto the reference grid, exactly."""
    to_mask = np.linalg.inv(affine) @ reference.affine  # reference voxel -> mask voxel
    linear, offset = to_mask[:3, :3], to_mask[:3, 3]
    if mask.shape == reference.shape and np.allclose(to_mask, np.eye(4), atol=GRID_TOLERANCE):
        return mask
    perm = np.rint(linear)
    is_signed_permutation = (
        np.allclose(linear, perm, atol=GRID_TOLERANCE)
        and np.all(np.abs(perm).sum(axis=0) == 1)
        and np.all(np.abs(perm).sum(axis=1) == 1)
    )
    if not is_signed_permutation or not np.allclose(offset, np.rint(offset), atol=GRID_TOLERANCE):
        raise InputError(
            f"{source}: its voxel grid is not the CT's grid (mask spacing "
            f"{_fmt(np.linalg.norm(affine[:3, :3], axis=0))} mm, CT spacing "
            f"{_fmt(reference.spacing)} mm, reference-to-mask voxel map "
            f"{np.round(to_mask[:3], 3).tolist()}); the two do not describe the same "
            "voxels. Resample the mask onto the CT (nearest neighbour) first"
        )
    return _reindex(mask, perm.astype(int), np.rint(offset).astype(int), reference.shape, source)


def _reindex(mask, perm, offset, shape, source) -> np.ndarray:
    """out[r] = mask[perm @ r + offset] for every reference voxel r, zero outside."""
    mask_axis = np.argmax(np.abs(perm), axis=0)  # mask axis that each reference axis walks
    sign = perm[mask_axis, range(3)]
    # View the mask with its axes in reference order and pointing the same way.
    view = np.transpose(mask, mask_axis)
    starts = offset[mask_axis].copy()
    for axis in range(3):
        if sign[axis] < 0:
            view = np.flip(view, axis)
            starts[axis] = mask.shape[mask_axis[axis]] - 1 - starts[axis]
    out = np.zeros(shape, dtype=mask.dtype)
    src, dst = [], []
    for axis in range(3):
        lo = max(0, -starts[axis])
        hi = min(shape[axis], view.shape[axis] - starts[axis])
        if hi <= lo:
            raise InputError(f"{source}: the mask's grid does not overlap the CT at all")
        dst.append(slice(lo, hi))
        src.append(slice(lo + starts[axis], hi + starts[axis]))
    out[tuple(dst)] = view[tuple(src)]
    lost = np.count_nonzero(view) - np.count_nonzero(out)
    if lost:
        raise InputError(f"{source}: {lost} labelled mask voxels lie outside the CT's field of view")
    return out


def _read_nifti(path: Path, dtype) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI data as (z, y, x) with an LPS affine, reoriented like an axial DICOM series.

    The voxel axes are turned to the closest of x -> patient left, y -> posterior,
    z -> superior, so a NIfTI CT gives the same crops (anterior up, patient's right
    on the image's left) as the DICOM series it was converted from.
    """
    import nibabel as nib
    from nibabel import orientations

    try:
        image = nib.load(str(path))
        data = image.get_fdata(dtype=dtype) if dtype else np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for broken files
        raise InputError(f"{path}: cannot be read as NIfTI ({error})") from error
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D image, found shape {data.shape}")
    if not np.all(np.isfinite(image.affine)) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: the NIfTI affine is missing or singular")
    turn = orientations.ornt_transform(
        orientations.io_orientation(image.affine), orientations.axcodes2ornt("LPS"))
    data = orientations.apply_orientation(data, turn)
    ras = image.affine @ orientations.inv_ornt_aff(turn, image.shape[:3])
    data = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    return data, RAS_TO_LPS @ ras @ IJK_FROM_ZYX


def _read_npy(path: Path) -> np.ndarray:
    try:
        mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: cannot be read as a .npy array ({error})") from error
    if mask.ndim != 3:
        raise InputError(f"{path}: expected a 3-D (z, y, x) mask, found shape {mask.shape}")
    return mask


def _fmt(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values)
