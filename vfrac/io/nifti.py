"""NIfTI CTs and masks, and geometry-less .npy masks: read in streamed pieces, checked before use."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from numpy.lib import format as npy

from vfrac.errors import InputError
from vfrac.io.budget import check_voxel_budget
from vfrac.io.grid import IJK_FROM_ZYX, RAS_TO_LPS

# Voxel data is streamed in pieces of about this size, so reading needs little beyond the volume.
READ_CHUNK_BYTES = 16 * 2**20
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: Path, dtype) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI data as (z, y, x) with an LPS affine, reoriented like an axial DICOM series.

    The voxel axes are turned to the closest of x -> patient left, y -> posterior,
    z -> superior, so a NIfTI CT gives the same crops (anterior up, patient's right
    on the image's left) as the DICOM series it was converted from. The header is
    checked before any voxel is read, and the voxels are streamed straight into
    their reoriented place: the peak memory is the volume plus a few MiB.
    """
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


def read_npy_mask(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """A .npy mask, loaded only after its header shows the CT's shape within the budget."""
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
