"""Where voxels are: the CT's (z, y, x) grid and its affine, and a mask placed on it exactly.

Axes are always (z, y, x) = (slice, row, column) with z rising along the slice
normal, and the affine maps (z, y, x, 1) voxel indices to patient LPS millimetres.
Every mask reader (NIfTI, NRRD, DICOM SEG, RTSTRUCT) ends here: masks are placed on a
CT by the two geometries, never by assuming matching array layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfrac.errors import InputError

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


def _fmt(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values)
