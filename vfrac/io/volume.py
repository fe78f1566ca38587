"""One CT as HU voxels plus the geometry that places them in the patient.

Axes are always (z, y, x) = (slice, row, column) with z rising along the slice
normal, and the affine maps (z, y, x, 1) voxel indices to patient LPS millimetres,
whether the CT came as a DICOM series or as NIfTI. Masks are placed on a CT by the
two geometries, never by assuming matching array layouts.
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vfrac.errors import InputError
from vfrac.io.budget import check_voxel_budget

log = logging.getLogger(__name__)

# Voxel data is streamed in pieces of about this size, so reading needs little beyond the volume.
READ_CHUNK_BYTES = 16 * 2**20
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MASK_SUFFIXES = NIFTI_SUFFIXES + (".npy", ".nrrd", ".dcm")  # .nrrd: also 3D Slicer's .seg.nrrd; .dcm: SEG, RTSTRUCT
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
            raise InputError(f"{path}: series= picks a DICOM series; a NIfTI file holds one volume")
        hu, affine = read_nifti(path, dtype=np.float32)
        return Volume(hu=hu, affine=affine)
    from vfrac.io.series import read_dicom

    hu, affine = read_dicom(path, series=series)
    return Volume(hu=hu, affine=affine)


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
    if str(path).lower().endswith(".npy"):
        return _read_npy(path, reference.shape)
    if str(path).lower().endswith(".nrrd"):
        from vfrac.io.nrrd import read_nrrd_mask  # it reads the volume module's constants

        mask, affine = read_nrrd_mask(path)
        return place_on_grid(mask, affine, reference, source=path)
    if str(path).lower().endswith(".dcm"):
        from vfrac.io.dicom_roi import read_dicom_roi  # it places SEG voxels with this module's place_on_grid

        return read_dicom_roi(path, reference, label)
    if not is_nifti(path):
        raise InputError(f"{path}: a mask must be .nii, .nii.gz, .nrrd (.seg.nrrd), .dcm (DICOM SEG or RTSTRUCT) "
                         "or .npy")
    mask, affine = read_nifti(path, dtype=None)
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


def read_nifti(path: Path, dtype) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI data as (z, y, x) with an LPS affine, reoriented like an axial DICOM series.

    The voxel axes are turned to the closest of x -> patient left, y -> posterior,
    z -> superior, so a NIfTI CT gives the same crops (anterior up, patient's right
    on the image's left) as the DICOM series it was converted from. The header is
    checked before any voxel is read, and the voxels are streamed straight into
    their reoriented place: the peak memory is the volume plus a few MiB.
    """
    from nibabel import orientations

    header = _nifti_header(path)
    try:
        claimed, stored, affine = header.get_data_shape(), header.get_data_dtype(), header.get_best_affine()
        slope, inter = header.get_slope_inter()
    except Exception as error:  # nibabel raises many types for broken headers
        raise InputError(f"{path}: cannot be read as NIfTI ({error})") from error
    check_voxel_budget(path, claimed)
    shape = _spatial_shape(claimed, path)
    if stored.kind not in "iuf":
        raise InputError(f"{path}: voxels of type {stored} are not plain numbers")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: the NIfTI affine is missing or singular")
    scale = (1.0 if slope is None else slope, 0.0 if inter is None else inter)
    file_axes = orientations.io_orientation(affine)
    lps = orientations.axcodes2ornt("LPS")
    turn = orientations.ornt_transform(file_axes, lps)
    dtype = dtype or (stored.newbyteorder("=") if scale == (1.0, 0.0) else np.float32)
    # apply_orientation moves file axis a to axis turn[a, 0]; ours are the reverse, (z, y, x).
    data = np.empty([shape[a] for a in np.argsort(turn[:, 0])][::-1], dtype=dtype)
    in_file_order = orientations.apply_orientation(  # a view: writes land in `data`
        data.transpose(2, 1, 0), orientations.ornt_transform(lps, file_axes))
    _stream_voxels(path, stored, int(header.get_data_offset()), scale, in_file_order)
    ras = affine @ orientations.inv_ornt_aff(turn, shape)
    return data, RAS_TO_LPS @ ras @ IJK_FROM_ZYX


def write_nifti(path, data_zyx: np.ndarray, affine_lps_zyx: np.ndarray) -> Path:
    """A (z, y, x) array with its (z, y, x) -> LPS affine as a NIfTI-1 file: read_nifti's inverse."""
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(data_zyx, (2, 1, 0))),
                            RAS_TO_LPS @ np.asarray(affine_lps_zyx, float) @ IJK_FROM_ZYX)
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    nib.save(image, str(path))
    return Path(path)


def _nifti_header(path: Path):
    """The NIfTI-1 or -2 header from the file's first bytes.

    Not nibabel.load: it reads every header extension whole, whatever size the file
    claims for it, so a 1 MB .nii.gz could make it allocate gigabytes.
    """
    import nibabel as nib

    try:
        with _open_stream(path) as stream:
            block = stream.read(nib.Nifti2Header.sizeof_hdr)
        for header_class in (nib.Nifti1Header, nib.Nifti2Header):
            if header_class.may_contain_header(block):
                return header_class(block[: header_class.sizeof_hdr])
    except Exception as error:  # gzip, zlib and nibabel raise many types for broken files
        raise InputError(f"{path}: cannot be read as NIfTI ({error})") from error
    raise InputError(f"{path}: cannot be read as NIfTI (no NIfTI-1 or NIfTI-2 header)")


def _spatial_shape(shape, path: Path) -> tuple[int, int, int]:
    """The header's shape as 3-D: trailing axes of length 1 are dropped."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3-D image, found shape {shape}")
    return shape


def _stream_voxels(path: Path, stored: np.dtype, offset: int, scale, target: np.ndarray) -> None:
    """Read the stored voxels in file order (i fastest) into `target`, scaled, piece by piece."""
    width, height, depth = target.shape
    row_bytes = width * stored.itemsize
    rows_per_read = max(1, min(height, READ_CHUNK_BYTES // row_bytes))
    buffer = memoryview(bytearray(rows_per_read * row_bytes))
    total, done = row_bytes * height * depth, 0
    slope, inter = scale
    scaled = scale != (1.0, 0.0)
    with _open_voxel_data(path, offset, total) as stream:
        for k in range(depth):
            for j in range(0, height, rows_per_read):
                rows = min(rows_per_read, height - j)
                piece = buffer[: rows * row_bytes]
                done += _read_into(stream, piece, path, done, total)
                block = np.frombuffer(piece, dtype=stored).reshape(rows, width).T
                target[:, j:j + rows, k] = block * slope + inter if scaled else block


def _open_stream(path: Path):
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


def _open_voxel_data(path: Path, offset: int, size: int):
    """The file positioned at its voxel data; an uncompressed file too short is refused at once."""
    if not str(path).lower().endswith(".gz"):
        on_disk = path.stat().st_size - offset
        if on_disk < size:
            raise InputError(f"{path}: damaged NIfTI: the header claims {size:,} bytes of voxel "
                             f"data, the file holds {max(on_disk, 0):,} (truncated?)")
    stream = _open_stream(path)
    try:
        stream.seek(offset)
    except (OSError, EOFError, zlib.error) as error:
        stream.close()
        raise InputError(f"{path}: damaged NIfTI ({error})") from error
    return stream


def _read_into(stream, piece: memoryview, path: Path, done: int, total: int) -> int:
    """Fill `piece` from the stream; a stream that ends first is a truncated file."""
    filled = 0
    try:
        while filled < len(piece):
            count = stream.readinto(piece[filled:])
            if not count:
                break
            filled += count
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(f"{path}: damaged NIfTI: cannot read its voxel data ({error})") from error
    if filled < len(piece):
        raise InputError(f"{path}: damaged NIfTI: the voxel data ends after {done + filled:,} of "
                         f"the {total:,} bytes its header claims (truncated?)")
    return filled


def _read_npy(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A .npy mask, loaded only after its header shows the CT's shape within the budget."""
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as handle:
            version = npy.read_magic(handle)
            read_header = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
            if read_header is None:
                raise InputError(f".npy format version {version} is not supported for masks")
            stored_shape, _, dtype = read_header(handle)
            data_start = handle.tell()
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: cannot be read as a .npy array ({error})") from error
    check_voxel_budget(path, stored_shape)
    if len(stored_shape) != 3:
        raise InputError(f"{path}: expected a 3-D (z, y, x) mask, found shape {stored_shape}")
    if stored_shape != tuple(shape):
        raise InputError(
            f"{path}: .npy mask has shape {stored_shape}, but the CT is "
            f"{tuple(shape)} (z, y, x); a .npy mask carries no geometry, so it "
            "must be on the CT's grid (or save it as NIfTI with its affine)"
        )
    size = math.prod(stored_shape) * dtype.itemsize
    if path.stat().st_size - data_start < size:
        raise InputError(f"{path}: damaged .npy: the header claims {size:,} bytes of data, "
                         f"the file holds {path.stat().st_size - data_start:,} (truncated?)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"{path}: cannot be read as a .npy array ({error})") from error


def _fmt(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values)
