"""NRRD masks, as 3D Slicer saves them (`.seg.nrrd` segmentations, `.nrrd` labelmaps).

pynrrd parses the header; the voxels are read here, after the header's size has passed
the voxel budget, and a gzip payload is inflated no further than that size: pynrrd
inflates a payload whole before it compares sizes, so a small file could claim a few
voxels and inflate to gigabytes. Only what Slicer writes is read (one file, raw or
gzip, one segment layer); anything else is refused with what to do instead.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import nrrd
import numpy as np

from vfrac.errors import InputError
from vfrac.io.budget import check_voxel_budget
from vfrac.io.grid import RAS_TO_LPS

SPACES = {"left-posterior-superior": np.eye(3), "lps": np.eye(3),
          "right-anterior-superior": RAS_TO_LPS[:3, :3], "ras": RAS_TO_LPS[:3, :3]}
TYPES = {  # NRRD type names (nrrd format 5) -> numpy
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i1": ("signed char", "int8", "int8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
}
NUMPY_TYPE = {name: code for code, names in TYPES.items() for name in names}
CHUNK = 1 << 20  # compressed bytes inflated at a time


def read_nrrd_mask(path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, affine): the mask indexed by the file's spatial axes, and the 4 x 4 map from
    those indices to patient LPS mm (what `vfrac.io.grid.place_on_grid` takes)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            header = nrrd.read_header(handle)
            sizes = [int(n) for n in header["sizes"]]
            check_voxel_budget(path, sizes)
            dtype = _dtype(header, path)
            _check_layout(header, path)
            payload = _read_payload(handle, header["encoding"].lower(), math.prod(sizes) * dtype.itemsize, path)
    except InputError:
        raise
    except (nrrd.NRRDError, KeyError, ValueError, TypeError) as error:
        raise InputError(f"{path}: cannot be read as NRRD ({error})") from error
    data = np.frombuffer(payload, dtype=dtype).reshape(sizes, order="F")  # NRRD's first axis is the fastest
    spatial = _spatial_axes(header, path)
    data = _one_layer(data, spatial, path)
    return data.astype(data.dtype.newbyteorder("="), copy=False), _affine(header, spatial, path)


def _dtype(header, path: Path) -> np.dtype:
    code = NUMPY_TYPE.get(str(header["type"]).lower())
    if code is None:
        raise InputError(f"{path}: NRRD voxels of type {header['type']!r} are not integer mask labels")
    endian = "<" if str(header.get("endian", "little")).lower() == "little" else ">"
    return np.dtype(endian + code)


def _check_layout(header, path: Path) -> None:
    if "data file" in header or "datafile" in header:
        raise InputError(f"{path}: the voxels are in a separate file (detached header); save as one .nrrd")
    if header["encoding"].lower() not in ("raw", "gzip", "gz"):
        raise InputError(f"{path}: NRRD encoding {header['encoding']!r} is not read; save it raw or gzip "
                         "(3D Slicer's default)")
    if int(header.get("line skip", header.get("lineskip", 0))) or int(header.get("byte skip",
                                                                                  header.get("byteskip", 0))):
        raise InputError(f"{path}: NRRD line or byte skips are not read; save the mask again from 3D Slicer")


def _read_payload(handle, encoding: str, expected: int, path: Path) -> bytes:
    """Exactly `expected` bytes of voxels; a payload that is shorter, or inflates past it, is refused."""
    if encoding == "raw":
        payload = handle.read(expected + 1)
    else:
        inflate, pieces, size = zlib.decompressobj(zlib.MAX_WBITS | 32), [], 0  # gzip or zlib header
        pending = handle.read(CHUNK)
        while pending and size <= expected:
            try:  # at most one byte past the expected size, so a bomb stops there
                piece = inflate.decompress(pending, expected + 1 - size)
            except zlib.error as error:
                raise InputError(f"{path}: the NRRD's compressed voxels are damaged ({error})") from error
            pieces.append(piece)
            size += len(piece)
            pending = inflate.unconsumed_tail or handle.read(CHUNK)
        payload = b"".join(pieces)
    if len(payload) != expected:
        more = "more" if len(payload) > expected else "fewer"
        raise InputError(f"{path}: the file holds {more} voxel bytes than its header's sizes say ({expected})")
    return payload


def _spatial_axes(header, path: Path) -> list[int]:
    """The axes with a direction in space; a segmentation's layer axis has none."""
    directions = np.asarray(header.get("space directions"), dtype=float)
    if directions.ndim != 2 or directions.shape[0] != len(header["sizes"]):
        raise InputError(f"{path}: the NRRD has no 'space directions' for its axes, so it cannot be placed on the CT")
    spatial = [axis for axis, row in enumerate(directions) if np.all(np.isfinite(row))]
    if len(spatial) != 3:
        raise InputError(f"{path}: expected 3 spatial axes, found {len(spatial)}")
    return spatial


def _one_layer(data: np.ndarray, spatial: list[int], path: Path) -> np.ndarray:
    """The 3-D labels: a segmentation's single layer, refused when its segments overlap (several layers)."""
    extra = [axis for axis in range(data.ndim) if axis not in spatial]
    if not extra:
        return data
    layers = int(np.prod([data.shape[axis] for axis in extra]))
    if layers > 1:
        raise InputError(f"{path}: the segmentation holds {layers} layers (overlapping segments); export the ROI "
                         "alone (3D Slicer: Segmentations, Export to labelmap) and give that file")
    return data.reshape([data.shape[axis] for axis in spatial])


def _affine(header, spatial: list[int], path: Path) -> np.ndarray:
    space = str(header.get("space", "")).lower()
    if space not in SPACES:
        raise InputError(f"{path}: NRRD space {header.get('space')!r} is not a patient space (LPS or RAS)")
    to_lps = SPACES[space]
    directions = np.asarray(header["space directions"], dtype=float)[spatial]
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = to_lps @ directions.T  # column a: one step along spatial axis a
    affine[:3, 3] = to_lps @ origin
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: the NRRD's space directions are missing or singular")
    return affine
