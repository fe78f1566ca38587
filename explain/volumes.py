"""Grad-CAM maps as volumes on the CT's own grid, so they open over the CT in 3D Slicer or OHIF.

Each explained slice's map is placed on its full axial slice through the crop's box (the
same placement as the slice overlays, explain.overlay.cam_on_slice); slices without a map
are 0. Written as float32 NIfTI with the CT's geometry (its LPS affine turned to NIfTI's
RAS), so a viewer that loaded the DICOM series lays it over the right voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explain.overlay import cam_on_slice


def map_volume(shape, slices, maps, transforms) -> np.ndarray:
    """(z, y, x) float32: map k placed on slice slices[k] through transforms[k]; 0 elsewhere."""
    volume = np.zeros(tuple(shape), np.float32)
    for z, cam, transform in zip(slices, maps, transforms, strict=True):
        placed, _ = cam_on_slice(cam, transform, volume.shape[1:])
        volume[int(z)] = np.maximum(volume[int(z)], placed)
    return volume


def write_nifti(path: Path, volume_zyx: np.ndarray, affine_lps_zyx: np.ndarray) -> Path:
    """A (z, y, x) array with a (z, y, x) -> LPS affine (vfrac.volume.Volume's) as a NIfTI-1 file."""
    import nibabel as nib

    from vfrac.volume import IJK_FROM_ZYX, RAS_TO_LPS

    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(volume_zyx, (2, 1, 0))),
                            RAS_TO_LPS @ np.asarray(affine_lps_zyx, float) @ IJK_FROM_ZYX)
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return Path(path)
