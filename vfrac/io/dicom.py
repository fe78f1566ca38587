"""Read a DICOM CT series as a hospital exports it, and refuse what would read wrong.

Files are read in two passes. The first reads every file's header only (up to its
pixel data): files are classified (CT image, skipped object, broken file), checked
against the voxel budget and their own size, grouped into series, ordered by
position along the slice normal, and checked for gaps, tilt and mixed geometry. The
second reads the chosen series' pixel data file by file and decodes it straight
into the HU array, so the peak memory is the volume plus one file. Deflated files
are inflated only as far as they are read, never past what their header allows.
Series assembly and geometry rules live in `vfrac.io.series`.

Messages name a file of a folder by its place in the folder's sorted listing
("file 12 of 88"), never by its name: DICOM file names are often SOP Instance
UIDs, which identify a patient.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

from vfrac.errors import InputError
from vfrac.io.budget import check_voxel_budget

# CT image objects, read as volumes.
CT_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
# Cross-sectional images of other modalities: refused by name, as their values are not HU.
OTHER_MODALITY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4": "MR",  # Legacy Converted Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.128": "PT",  # Positron Emission Tomography Image Storage
    "1.2.840.10008.5.1.4.1.1.130": "PT",  # Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.128.1": "PT",  # Legacy Converted Enhanced PET Image Storage
}
# What to install when no decoder handles a transfer syntax (pydicom handles the rest).
DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}
# Compressed pixel data may expand this much; more means the header lies about the size.
MAX_COMPRESSION_RATIO = 1000
SMALL_IMAGE_BYTES = 64 * 2**20
# A deflated file's header (everything before its pixel data) may inflate to this much.
MAX_HEADER_BYTES = 64 * 2**20
INFLATE_CHUNK_BYTES = 2**20
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class Place:
    """How messages name a file: by its place in the folder the user gave, or as given."""

    named: Path  # what the user gave: a series folder, or the file itself
    number: int = 0  # the file's place in the folder's sorted listing, from 1; 0: the file itself
    count: int = 0

    @property
    def name(self) -> str:
        """The file inside a message about its folder."""
        return f"file {self.number} of {self.count}" if self.number else self.named.name

    def __str__(self) -> str:
        return f"{self.named} ({self.name})" if self.number else str(self.named)


@dataclass
class DicomFile:
    """One CT image file: its header, and where its pixel data lies, to be read when decoded."""

    path: Path
    place: Place
    header: FileDataset  # every element before the pixel data
    pixel_offset: int  # where the pixel data element starts in the (inflated) data set
    deflated_from: int | None  # where the deflated data set starts in the file; None if not deflated

    def load_pixel_data(self) -> Dataset:
        """The header with its pixel data element, read from the file once."""
        if PIXEL_DATA not in self.header:
            self.header[PIXEL_DATA] = self._read_pixel_element()
        return self.header

    def drop_pixel_data(self) -> None:
        if PIXEL_DATA in self.header:
            del self.header[PIXEL_DATA]

    def _read_pixel_element(self):
        is_implicit, is_little = self.header.original_encoding
        try:
            with open(self.path, "rb") as stream:
                if self.deflated_from is not None:
                    stream.seek(self.deflated_from)
                    value_start = self.pixel_offset + 12  # tag, VR, reserved, 4-byte length
                    limit = value_start + _pixel_bytes(self.header, self.place) + 16
                    stream = Inflated(stream, limit, self.place, "its header's Rows, Columns and frames claim")
                stream.seek(self.pixel_offset)
                rest = read_dataset(stream, is_implicit, is_little, stop_when=_past_pixel_data)
        except InputError:
            raise
        except Exception as error:  # pydicom and zlib raise many types for damaged files
            raise InputError(f"{self.place}: damaged DICOM file ({type(error).__name__}: {error})") from error
        if PIXEL_DATA not in rest:
            raise InputError(f"{self.place}: damaged DICOM file: its pixel data cannot be read")
        return rest.get_item(PIXEL_DATA)


@dataclass
class Frame:
    """One 2-D image (a single-frame file or one frame of a multi-frame file)."""

    file: DicomFile
    index: int | None  # frame number in a multi-frame file, None for single-frame
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: np.ndarray  # ImageOrientationPatient: row cosines, then column cosines
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns) = (dy, dx)
    slope: float
    intercept: float
    series_uid: str
    series_number: str
    series_description: str

    @property
    def dataset(self) -> FileDataset:
        return self.file.header

    @property
    def name(self) -> str:
        """The frame inside a message about its folder."""
        name = self.file.place.name
        return name if self.index is None else f"{name} frame {self.index + 1}"


class Inflated:
    """A deflated data set as a seekable stream, inflated only as far as it is read.

    Reading past `limit` bytes is refused: pydicom inflates a whole deflated file at
    once, and a few MB can inflate to gigabytes. `allowance` says in messages what
    the limit stands for.
    """

    def __init__(self, raw, limit: int, place: Place, allowance: str):
        self._raw, self._limit, self._place, self._allowance = raw, limit, place, allowance
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._data = bytearray()
        self._position = 0

    def read(self, size: int) -> bytes:
        end = self._position + size
        if end > self._limit:
            raise InputError(f"{self._place}: its deflated data set inflates past {self._limit:,} "
                             f"bytes, more than {self._allowance}")
        while len(self._data) < end and not self._inflater.eof:
            compressed = self._inflater.unconsumed_tail or self._raw.read(INFLATE_CHUNK_BYTES)
            if not compressed:
                break
            self._data += self._inflater.decompress(compressed, INFLATE_CHUNK_BYTES)
        with memoryview(self._data) as inflated:
            chunk = bytes(inflated[self._position:end])
        self._position += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        self._position = offset + (self._position if whence == 1 else 0)
        return self._position

    def tell(self) -> int:
        return self._position


def read_file(path: Path, place: Place) -> tuple[DicomFile | None, str | None]:
    """A CT image file's header, or a reason to skip the file; broken files raise."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] != b"DICM":
        return None, _bare_dataset_reason(path, place)
    try:
        header, pixel_offset, deflated_from = _read_header(path, place)
    except InputError:
        raise
    except Exception as error:  # pydicom and zlib raise many types for damaged files
        raise InputError(f"{place}: damaged DICOM file ({type(error).__name__}: {error})") from error
    reason = _not_ct_reason(header)
    if reason:
        return None, reason
    if pixel_offset is None:
        # An image's pixel data is required: a file without it has lost it (cut at an element's end).
        raise InputError(f"{place}: damaged DICOM file: it ends inside its header, before any pixel data (truncated?)")
    dicom = DicomFile(path, place, header, pixel_offset, deflated_from)
    _check_pixel_claim(dicom)
    return dicom, None


def _read_header(path: Path, place: Place) -> tuple[FileDataset, int | None, int | None]:
    """Every element before the pixel data, where the pixel data starts (None: nowhere)
    and, for a deflated file, where its deflated data set starts.

    Not pydicom.dcmread: it inflates a deflated file whole, however big it claims to be.
    """
    with open(path, "rb") as raw:
        preamble = read_preamble(raw, force=False)
        file_meta = FileMetaDataset(read_dataset(raw, False, True, stop_when=_past_file_meta))
        syntax = _transfer_syntax(file_meta, path, place)
        deflated_from = raw.tell() if syntax.is_deflated else None
        stream = Inflated(raw, MAX_HEADER_BYTES, place, "a header may hold") if syntax.is_deflated else raw
        is_implicit, is_little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
        body = read_dataset(stream, is_implicit, is_little, stop_when=_at_pixel_data)
        header = FileDataset(str(path), body, preamble, file_meta, is_implicit, is_little)
        return header, _locate_pixel_data(stream, header), deflated_from


def _transfer_syntax(file_meta: FileMetaDataset, path: Path, place: Place) -> UID:
    if "TransferSyntaxUID" in file_meta:
        return UID(file_meta.TransferSyntaxUID)
    meta_end = 144 + int(file_meta.get("FileMetaInformationGroupLength", 0))  # counted from byte 144
    if path.stat().st_size < meta_end:
        raise InputError(f"{place}: damaged DICOM file: it ends inside its file meta information (truncated?)")
    raise InputError(f"{place}: file meta information has no Transfer Syntax UID (0002,0010)")


def _locate_pixel_data(stream, header: FileDataset) -> int | None:
    """Where the pixel data element starts: the stream's position, or None if the file has none.

    pydicom stops quietly where a file ends. A last element that runs past that end,
    or is followed by a partial tag, is a cut file's: it is dropped, as its value (a
    SOP Class UID cut to "1.2.840", a Modality cut to "C") cannot be trusted.
    """
    offset = stream.tell()
    tag = struct.pack("<HH" if header.original_encoding[1] else ">HH", 0x7FE0, 0x0010)
    if stream.read(4) == tag:
        return offset
    last = header.get_item(max(header.keys())) if len(header) else None
    # A sequence of undefined length records no end; anything else must end where the file does.
    if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF and last.value_tell + last.length != offset:
        del header[last.tag]
    return None


def _past_file_meta(tag, vr, length) -> bool:
    return tag.group != 2


def _at_pixel_data(tag, vr, length) -> bool:
    return tag == PIXEL_DATA


def _past_pixel_data(tag, vr, length) -> bool:
    return tag != PIXEL_DATA


def _not_ct_reason(dataset: Dataset) -> str | None:
    """Why an object is not read as a CT image, or None when it is one."""
    sop_class = str(dataset.get("SOPClassUID") or dataset.file_meta.get("MediaStorageSOPClassUID") or "")
    declared = str(dataset.get("Modality") or "").upper()
    what = f"{UID(sop_class).name} object" if sop_class else "no SOP Class UID object"
    if sop_class in OTHER_MODALITY_SOP_CLASSES:
        return f"{what}, is {OTHER_MODALITY_SOP_CLASSES[sop_class]}, not CT"
    if sop_class and sop_class not in CT_SOP_CLASSES:
        return what
    if declared not in ("", "CT"):
        return f"{what}, is {declared}, not CT"
    if not sop_class and not declared:  # anonymisers sometimes blank the class, not the modality
        return what
    image_type = [str(v).upper() for v in _as_list(dataset.get("ImageType", []))]
    if "LOCALIZER" in image_type:
        return "localizer (scout) image"
    return None


def _pixel_bytes(dataset: Dataset, place) -> int:
    """The bytes of pixel data the header claims, over all frames."""
    rows, columns = _number(dataset, "Rows", place, int), _number(dataset, "Columns", place, int)
    bits = _number(dataset, "BitsAllocated", place, int)
    return _frame_count(dataset, place) * rows * columns * bits // 8


def _frame_count(dataset: Dataset, place) -> int:
    return _number(dataset, "NumberOfFrames", place, int) if "NumberOfFrames" in dataset else 1


def _check_pixel_claim(dicom: DicomFile) -> None:
    """Refuse a file whose header claims more pixels than the budget or than the file can hold."""
    header, place = dicom.header, dicom.place
    shape = (_frame_count(header, place), _number(header, "Rows", place, int),
             _number(header, "Columns", place, int))
    check_voxel_budget(place, shape)
    size = dicom.path.stat().st_size
    if dicom.deflated_from is not None:
        _check_stored_bytes(header, place, size - dicom.deflated_from, compressed=True)
    else:
        value_start = dicom.pixel_offset + (8 if header.original_encoding[0] else 12)
        _check_stored_bytes(header, place, size - value_start, header.file_meta.TransferSyntaxUID.is_compressed)


def _check_stored_bytes(dataset: Dataset, place, stored: int, compressed: bool) -> None:
    """Stored pixel bytes must hold what the header claims (compressed: within a sane ratio)."""
    expected = _pixel_bytes(dataset, place)
    what = (f"{_frame_count(dataset, place)} x {dataset.Rows} x {dataset.Columns} x "
            f"{dataset.BitsAllocated} bit")
    if not compressed and stored < expected:
        raise InputError(f"{place}: pixel data is {stored:,} bytes, expected {expected:,} for "
                         f"{what} (truncated file?)")
    if compressed and expected > max(SMALL_IMAGE_BYTES, MAX_COMPRESSION_RATIO * stored):
        raise InputError(f"{place}: header claims {what} ({expected:,} bytes), more than "
                         f"{stored:,} bytes of compressed data can hold")


def frames_of(dicom: DicomFile) -> list[Frame]:
    """Every frame with its geometry and rescale, from the functional groups if multi-frame."""
    dataset, place = dicom.header, dicom.place
    series = dict(
        series_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
        series_number=str(dataset.get("SeriesNumber", "") or ""),
        series_description=str(dataset.get("SeriesDescription", "") or ""),
    )
    rows, columns = _number(dataset, "Rows", place, int), _number(dataset, "Columns", place, int)
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        return [Frame(dicom, None, rows=rows, columns=columns, **_plane(dataset, place), **series)]
    count = _number(dataset, "NumberOfFrames", place, int)
    per_frame = dataset.PerFrameFunctionalGroupsSequence
    if len(per_frame) != count:
        raise InputError(f"{place}: {count} frames but {len(per_frame)} per-frame functional groups")
    shared = dataset.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    frames = []
    for index, group in enumerate(per_frame):
        merged = Dataset()
        for source in (shared, group):  # per-frame values override shared ones
            for sequence in ("PlanePositionSequence", "PlaneOrientationSequence",
                             "PixelMeasuresSequence", "PixelValueTransformationSequence"):
                if sequence in source and len(source[sequence].value):
                    merged.update(source[sequence].value[0])
        frames.append(Frame(dicom, index, rows=rows, columns=columns,
                            **_plane(merged, place, f" frame {index + 1}"), **series))
    return frames


def decode_frames(frames: list[Frame]) -> np.ndarray:
    """Decode each frame straight into its slice of one float32 HU array.

    A file's pixel data is read at its first frame and dropped after its last.
    """
    last_use = {id(frame.file): z for z, frame in enumerate(frames)}
    hu = np.empty((len(frames), frames[0].rows, frames[0].columns), dtype=np.float32)
    for z, frame in enumerate(frames):
        pixels = decode_pixels(frame)
        np.multiply(pixels, frame.slope, out=hu[z], casting="unsafe")
        hu[z] += frame.intercept
        if last_use[id(frame.file)] == z:
            frame.file.drop_pixel_data()
    return hu


def decode_pixels(frame: Frame) -> np.ndarray:
    """Stored values of one frame, after checking the file holds what it claims."""
    # here: pydicom.pixels loads every decoder plugin (0.4 s), which only decoding needs

    place = frame.file.place
    dataset = frame.file.load_pixel_data()
    syntax = dataset.file_meta.TransferSyntaxUID
    if dataset.get("SamplesPerPixel", 1) != 1 or not str(
        dataset.get("PhotometricInterpretation", "MONOCHROME2")
    ).startswith("MONOCHROME"):
        raise InputError(f"{place}: colour pixel data ({dataset.get('PhotometricInterpretation')}), not a CT image")
    _check_stored_bytes(dataset, place, len(dataset.PixelData), syntax.is_compressed)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise InputError(f"{place}: unsupported transfer syntax {syntax.name}") from error
    if not decoder.is_available:
        package = DECODER_PACKAGES.get(str(syntax), "pylibjpeg")
        raise InputError(
            f"{place}: pixel data is {syntax.name} and no installed decoder handles it; "
            f"install one with: pip install {package}"
        )
    try:
        pixels, _ = decoder.as_array(dataset, index=frame.index)
    except Exception as error:  # decoders raise many types for corrupt data
        raise InputError(f"{place}: cannot decode {syntax.name} pixel data ({error})") from error
    if pixels.shape != (frame.rows, frame.columns):
        raise InputError(f"{place}: decoded image is {pixels.shape}, expected {frame.rows} x {frame.columns}")
    return pixels


def _plane(dataset: Dataset, place, where: str = "") -> dict:
    """Position, orientation, spacing and rescale of one plane, validated."""
    position = _vector(dataset, "ImagePositionPatient", 3, place, where)
    orientation = _vector(dataset, "ImageOrientationPatient", 6, place, where)
    row_cos, col_cos = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row_cos) - 1) > 1e-2 or abs(np.linalg.norm(col_cos) - 1) > 1e-2
            or abs(np.dot(row_cos, col_cos)) > 1e-2):
        raise InputError(f"{place}{where}: ImageOrientationPatient {orientation.tolist()} "
                         "is not two orthogonal unit vectors")
    spacing = _vector(dataset, "PixelSpacing", 2, place, where)
    if np.any(spacing <= 0):
        raise InputError(f"{place}{where}: PixelSpacing {spacing.tolist()} must be positive")
    slope = _number(dataset, "RescaleSlope", place, float, default=1.0, where=where)
    intercept = _number(dataset, "RescaleIntercept", place, float, default=0.0, where=where)
    if slope == 0:
        raise InputError(f"{place}{where}: RescaleSlope is 0")
    return dict(position=position, orientation=orientation,
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=slope, intercept=intercept)


def _vector(dataset: Dataset, keyword: str, size: int, place, where: str) -> np.ndarray:
    if keyword not in dataset or dataset[keyword].value in (None, ""):
        raise InputError(f"{place}{where}: {keyword} is missing")
    try:
        values = np.array([float(v) for v in _as_list(dataset[keyword].value)])
    except (TypeError, ValueError) as error:
        raise InputError(f"{place}{where}: {keyword} has an invalid value ({error})") from error
    if values.shape != (size,) or not np.all(np.isfinite(values)):
        raise InputError(f"{place}{where}: {keyword} should be {size} numbers, found {values.tolist()}")
    return values


def _number(dataset: Dataset, keyword: str, place, kind, default=None, where: str = ""):
    try:
        value = dataset.get(keyword, None)
    except ValueError as error:  # pydicom refuses to convert an invalid string
        raise InputError(f"{place}{where}: {keyword} has an invalid value ({error})") from error
    if value is None or value == "":
        if default is None:
            raise InputError(f"{place}{where}: {keyword} is missing")
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError) as error:
        raise InputError(f"{place}{where}: {keyword} has an invalid value {value!r}") from error
    if not np.isfinite(number) or (kind is int and number <= 0):
        raise InputError(f"{place}{where}: {keyword} has an invalid value {value!r}")
    return number


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _bare_dataset_reason(path: Path, place: Place) -> str:
    """Why a file without the 'DICM' prefix is skipped; a bare image data set raises."""
    try:
        dataset = pydicom.dcmread(path, force=True)
        is_dicom = any(tag.group == 0x0008 for tag in dataset.keys())
    except Exception:  # anything unparseable is simply not DICOM
        is_dicom = False
    if not is_dicom:
        return "not a DICOM file"
    sop_class = str(dataset.get("SOPClassUID") or "")
    if sop_class in CT_SOP_CLASSES or sop_class in OTHER_MODALITY_SOP_CLASSES or "PixelData" in dataset:
        raise InputError(
            f"{place}: DICOM image without file meta information (no preamble and 'DICM' "
            "prefix); export the series again as DICOM Part 10 files"
        )
    name = UID(sop_class).name if sop_class else "DICOM data"
    return f"{name} without file meta information"
