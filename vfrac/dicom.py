"""Read a DICOM CT series as a hospital exports it, and refuse what would read wrong.

Files are classified (CT image, skipped object, broken file), grouped into series,
ordered by position along the slice normal, checked for gaps, tilt and mixed
geometry, and decoded slice by slice straight into the HU array, so the peak memory
is the volume plus the compressed files. Geometry rules live in `vfrac.series`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from vfrac.errors import InputError

log = logging.getLogger(__name__)

# Cross-sectional image objects read as volumes; every other object is skipped.
VOLUME_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
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


@dataclass
class Frame:
    """One 2-D image (a single-frame file or one frame of a multi-frame file)."""

    path: Path
    dataset: Dataset
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
    def name(self) -> str:
        return self.path.name if self.index is None else f"{self.path.name} frame {self.index + 1}"


def read_dicom(path: Path, series=None) -> tuple[np.ndarray, np.ndarray]:
    """HU array (z, y, x) float32 and LPS affine of a series folder or one DICOM file."""
    from vfrac.series import choose_series, group_series, order_frames

    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    frames, skipped = [], Counter()
    for file in files:
        dataset, reason = read_file(file)
        if reason:
            skipped[reason] += 1
            # File names are often SOP Instance UIDs, so they stay out of normal logs.
            log.debug("%s: skipped %s (%s)", path, file.name, reason)
        else:
            frames.extend(frames_of(dataset, file))
    what = "; ".join(f"{count} x {reason}" for reason, count in skipped.most_common())
    if skipped:
        log.info("%s: skipped %d file(s): %s", path, skipped.total(), what)
    if not frames:
        if path.is_file():
            raise InputError(f"{path}: not a CT image ({what.split(' x ', 1)[1]})")
        raise InputError(f"{path}: no CT image among {len(files)} file(s)" + (f"; skipped {what}" if what else ""))
    frames = choose_series(group_series(frames), series, path)
    frames, affine = order_frames(frames, path)
    return decode_frames(frames), affine


def read_file(path: Path) -> tuple[Dataset | None, str | None]:
    """The dataset of an image file, or a reason to skip it; broken files raise."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] != b"DICM":
        return None, _bare_dataset_reason(path)
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many types for damaged files
        raise InputError(f"{path}: damaged DICOM file ({type(error).__name__}: {error})") from error
    if "TransferSyntaxUID" not in dataset.file_meta:
        raise InputError(f"{path}: file meta information has no Transfer Syntax UID (0002,0010)")
    sop_class = str(dataset.get("SOPClassUID") or dataset.file_meta.get("MediaStorageSOPClassUID") or "")
    if not sop_class and dataset.get("Modality") == "CT":
        sop_class = "1.2.840.10008.5.1.4.1.1.2"  # anonymisers sometimes blank the class
    if sop_class not in VOLUME_SOP_CLASSES:
        name = UID(sop_class).name if sop_class else "no SOP Class UID"
        return None, f"{name} object"
    image_type = [str(v).upper() for v in _as_list(dataset.get("ImageType", []))]
    if "LOCALIZER" in image_type:
        return None, "localizer (scout) image"
    if "PixelData" not in dataset:
        raise InputError(f"{path}: {VOLUME_SOP_CLASSES[sop_class]} object has no pixel data")
    return dataset, None


def frames_of(dataset: Dataset, path: Path) -> list[Frame]:
    """Every frame with its geometry and rescale, from the functional groups if multi-frame."""
    series = dict(
        series_uid=str(dataset.get("SeriesInstanceUID", "") or ""),
        series_number=str(dataset.get("SeriesNumber", "") or ""),
        series_description=str(dataset.get("SeriesDescription", "") or ""),
    )
    rows, columns = _number(dataset, "Rows", path, int), _number(dataset, "Columns", path, int)
    if "PerFrameFunctionalGroupsSequence" not in dataset:
        return [Frame(path, dataset, None, rows=rows, columns=columns, **_plane(dataset, path), **series)]
    count = _number(dataset, "NumberOfFrames", path, int)
    per_frame = dataset.PerFrameFunctionalGroupsSequence
    if len(per_frame) != count:
        raise InputError(f"{path}: {count} frames but {len(per_frame)} per-frame functional groups")
    shared = dataset.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    frames = []
    for index, group in enumerate(per_frame):
        merged = Dataset()
        for source in (shared, group):  # per-frame values override shared ones
            for sequence in ("PlanePositionSequence", "PlaneOrientationSequence",
                             "PixelMeasuresSequence", "PixelValueTransformationSequence"):
                if sequence in source and len(source[sequence].value):
                    merged.update(source[sequence].value[0])
        frames.append(Frame(path, dataset, index, rows=rows, columns=columns,
                            **_plane(merged, path, f" frame {index + 1}"), **series))
    return frames


def decode_frames(frames: list[Frame]) -> np.ndarray:
    """Decode each frame straight into its slice of one float32 HU array."""
    hu = np.empty((len(frames), frames[0].rows, frames[0].columns), dtype=np.float32)
    for z, frame in enumerate(frames):
        pixels = decode_pixels(frame)
        np.multiply(pixels, frame.slope, out=hu[z], casting="unsafe")
        hu[z] += frame.intercept
    return hu


def decode_pixels(frame: Frame) -> np.ndarray:
    """Stored values of one frame, after checking the file can hold what it claims."""
    from pydicom.pixels import get_decoder

    dataset, path = frame.dataset, frame.path
    syntax = dataset.file_meta.TransferSyntaxUID
    if dataset.get("SamplesPerPixel", 1) != 1 or not str(
        dataset.get("PhotometricInterpretation", "MONOCHROME2")
    ).startswith("MONOCHROME"):
        raise InputError(f"{path}: colour pixel data ({dataset.get('PhotometricInterpretation')}), not a CT image")
    bits = _number(dataset, "BitsAllocated", path, int)
    count = _number(dataset, "NumberOfFrames", path, int) if "NumberOfFrames" in dataset else 1
    expected = frame.rows * frame.columns * count * bits // 8
    stored = len(dataset.PixelData)
    if not syntax.is_compressed and stored < expected:
        raise InputError(
            f"{path}: pixel data is {stored:,} bytes, expected {expected:,} for "
            f"{count} x {frame.rows} x {frame.columns} x {bits} bit (truncated file?)"
        )
    if syntax.is_compressed and expected > max(SMALL_IMAGE_BYTES, MAX_COMPRESSION_RATIO * stored):
        raise InputError(
            f"{path}: header claims {count} x {frame.rows} x {frame.columns} pixels "
            f"({expected:,} bytes), more than {stored:,} bytes of compressed data can hold"
        )
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise InputError(f"{path}: unsupported transfer syntax {syntax.name}") from error
    if not decoder.is_available:
        package = DECODER_PACKAGES.get(str(syntax), "pylibjpeg")
        raise InputError(
            f"{path}: pixel data is {syntax.name} and no installed decoder handles it; "
            f"install one with: pip install {package}"
        )
    try:
        pixels, _ = decoder.as_array(dataset, index=frame.index)
    except Exception as error:  # decoders raise many types for corrupt data
        raise InputError(f"{path}: cannot decode {syntax.name} pixel data ({error})") from error
    if pixels.shape != (frame.rows, frame.columns):
        raise InputError(f"{path}: decoded image is {pixels.shape}, expected {frame.rows} x {frame.columns}")
    return pixels


def _plane(dataset: Dataset, path: Path, where: str = "") -> dict:
    """Position, orientation, spacing and rescale of one plane, validated."""
    position = _vector(dataset, "ImagePositionPatient", 3, path, where)
    orientation = _vector(dataset, "ImageOrientationPatient", 6, path, where)
    row_cos, col_cos = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row_cos) - 1) > 1e-2 or abs(np.linalg.norm(col_cos) - 1) > 1e-2
            or abs(np.dot(row_cos, col_cos)) > 1e-2):
        raise InputError(f"{path}{where}: ImageOrientationPatient {orientation.tolist()} "
                         "is not two orthogonal unit vectors")
    spacing = _vector(dataset, "PixelSpacing", 2, path, where)
    if np.any(spacing <= 0):
        raise InputError(f"{path}{where}: PixelSpacing {spacing.tolist()} must be positive")
    slope = _number(dataset, "RescaleSlope", path, float, default=1.0, where=where)
    intercept = _number(dataset, "RescaleIntercept", path, float, default=0.0, where=where)
    if slope == 0:
        raise InputError(f"{path}{where}: RescaleSlope is 0")
    return dict(position=position, orientation=orientation,
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                slope=slope, intercept=intercept)


def _vector(dataset: Dataset, keyword: str, size: int, path: Path, where: str) -> np.ndarray:
    if keyword not in dataset or dataset[keyword].value in (None, ""):
        raise InputError(f"{path}{where}: {keyword} is missing")
    try:
        values = np.array([float(v) for v in _as_list(dataset[keyword].value)])
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}{where}: {keyword} has an invalid value ({error})") from error
    if values.shape != (size,) or not np.all(np.isfinite(values)):
        raise InputError(f"{path}{where}: {keyword} should be {size} numbers, found {values.tolist()}")
    return values


def _number(dataset: Dataset, keyword: str, path: Path, kind, default=None, where: str = ""):
    try:
        value = dataset.get(keyword, None)
    except ValueError as error:  # pydicom refuses to convert an invalid string
        raise InputError(f"{path}{where}: {keyword} has an invalid value ({error})") from error
    if value is None or value == "":
        if default is None:
            raise InputError(f"{path}{where}: {keyword} is missing")
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}{where}: {keyword} has an invalid value {value!r}") from error
    if not np.isfinite(number) or (kind is int and number <= 0):
        raise InputError(f"{path}{where}: {keyword} has an invalid value {value!r}")
    return number


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _bare_dataset_reason(path: Path) -> str:
    """Why a file without the 'DICM' prefix is skipped; a bare CT dataset raises."""
    try:
        dataset = pydicom.dcmread(path, force=True)
        is_dicom = any(tag.group == 0x0008 for tag in dataset.keys())
    except Exception:  # anything unparseable is simply not DICOM
        is_dicom = False
    if not is_dicom:
        return "not a DICOM file"
    sop_class = str(dataset.get("SOPClassUID") or "")
    if sop_class in VOLUME_SOP_CLASSES or "PixelData" in dataset:
        raise InputError(
            f"{path}: DICOM image without file meta information (no preamble and 'DICM' "
            "prefix); export the series again as DICOM Part 10 files"
        )
    name = UID(sop_class).name if sop_class else "DICOM data"
    return f"{name} without file meta information"

