"""Write small but valid CT DICOM files with pydicom, as a scanner would, for tests; and NIfTI and .npy headers."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
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


def write_claim(path: Path, rows: int, columns: int, syntax=ExplicitVRLittleEndian) -> Path:
    """A CT file whose header claims rows x columns pixels but that holds 64 bytes of them."""
    ds = ct_slice(np.zeros((4, 8), np.int16), slice_positions(1)[0])
    ds.Rows, ds.Columns = rows, columns
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax.is_compressed:
        ds.PixelData = encapsulate([bytes(64)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def deflate_zeros(head: bytes, zeros: int) -> Iterator[bytes]:
    """Raw deflate of `head` then `zeros` zero bytes, made in milliseconds.

    After a full flush a compressor starts afresh, so the deflate of one block of
    zeros can be repeated as often as needed: about 1 KB per MB of zeros.
    """
    block = 2**26
    start = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    yield start.compress(head) + start.flush(zlib.Z_FULL_FLUSH)
    if zeros >= block:
        repeated = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        unit = repeated.compress(bytes(block)) + repeated.flush(zlib.Z_FULL_FLUSH)
        for _ in range(zeros // block):
            yield unit
    end = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    yield end.compress(bytes(zeros % block)) + end.flush()


def write_deflated_zeros(path: Path, rows: int, columns: int, bits: int = 8, pixel_bytes=None) -> Path:
    """A Deflated Explicit VR Little Endian CT of one rows x columns frame of zeros.

    Really deflated and whole: 60000 x 60000 x 8 bit is a 3.5 MB file that inflates
    to 3.6 GB. `pixel_bytes` makes the pixel data longer (or shorter) than the frame.
    """
    ds = ct_slice(np.zeros((1, 1), np.int16), slice_positions(1)[0])
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta, body = DicomBytesIO(), DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    write_dataset(body, ds)
    size = rows * columns * bits // 8 if pixel_bytes is None else pixel_bytes
    pixel_element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, size)
    with open(path, "wb") as out:
        out.write(bytes(128) + b"DICM" + meta.getvalue())
        out.writelines(deflate_zeros(body.getvalue() + pixel_element, size))
    return path


def nifti_header(shape, dtype=np.uint8) -> bytes:
    """A NIfTI-1 header claiming `shape`, with the 4 bytes that end it: 352 bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    return header.binaryblock + bytes(4)


def write_gzip(path: Path, head: bytes, zeros: int = 0) -> Path:
    """A whole gzip member of `head` and `zeros` zero bytes, streamed: ~1 KB per MB of zeros."""
    crc, block = zlib.crc32(head), bytes(2**26)
    for start in range(0, zeros, len(block)):
        crc = zlib.crc32(block[: min(len(block), zeros - start)], crc)
    with open(path, "wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
        out.writelines(deflate_zeros(head, zeros))
        out.write(struct.pack("<II", crc, (len(head) + zeros) % 2**32))
    return path


def write_npy_header(path: Path, shape) -> Path:
    """A .npy file of uint8 whose header claims `shape` and that holds no data."""
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return path
