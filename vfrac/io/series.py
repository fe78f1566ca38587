"""Which frames form one series, in which order, and whether they make a regular volume.

Order comes only from ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient row and column cosines): InstanceNumber and
file names are wrong often enough in real exports to never be trusted.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from vfrac.errors import InputError
from vfrac.io.budget import check_voxel_budget
from vfrac.io.dicom import Frame, Place, decode_frames, decode_pixels, frames_of, read_file

log = logging.getLogger(__name__)

DUPLICATE_MM = 1e-3  # positions closer than this are the same slice
SPACING_TOLERANCE = 0.05  # a step may differ from the median step by this fraction
GAP_FACTOR = 1.5  # a step this many times the median is a missing slice
TILT_DEGREES = 0.5  # slice stack vs. normal; beyond this the volume is sheared
ORIENTATION_TOLERANCE = 1e-3


def read_dicom(path: Path, series=None) -> tuple[np.ndarray, np.ndarray]:
    """HU array (z, y, x) float32 and LPS affine of a series folder or one DICOM file."""
    in_folder = path.is_dir()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if in_folder else [path]
    frames, skipped = [], Counter()
    for number, file in enumerate(files, 1):
        place = Place(path, number, len(files)) if in_folder else Place(path)
        dicom, reason = read_file(file, place)
        if reason:
            skipped[reason] += 1
            log.debug("%s: skipped (%s)", place, reason)
        else:
            frames.extend(frames_of(dicom))
    what = "; ".join(f"{count} x {reason}" for reason, count in skipped.most_common())
    if skipped:
        log.info("%s: skipped %d file(s): %s", path, skipped.total(), what)
    if not frames:
        if path.is_file():
            raise InputError(f"{path}: not a CT image ({what.split(' x ', 1)[1]})")
        raise InputError(f"{path}: no CT image among {len(files)} file(s)" + (f"; skipped {what}" if what else ""))
    frames = choose_series(group_series(frames), series, path)
    check_voxel_budget(path, (len(frames), frames[0].rows, frames[0].columns))
    frames, affine = order_frames(frames, path)
    return decode_frames(frames), affine


ACQUISITION = {"manufacturer": "Manufacturer", "model": "ManufacturerModelName", "kvp": "KVP",
               "slice_thickness": "SliceThickness"}  # acquisition facts a methods table reports; none identifies


def acquisition(path: Path) -> dict:
    """The ACQUISITION fields of a DICOM series (its first CT file's header); {} for NIfTI or no CT file."""
    path = Path(path)
    if not path.is_dir() and not path.suffix.lower() == ".dcm":
        return {}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for number, file in enumerate(files, 1):
        dicom, reason = read_file(file, Place(path, number, len(files)))
        if not reason:
            return {name: str(dicom.header.get(keyword, "")).strip() for name, keyword in ACQUISITION.items()}
    return {}


def group_series(frames: list[Frame]) -> list[list[Frame]]:
    """Group by SeriesInstanceUID, or by geometry where the UID is empty."""
    groups = defaultdict(list)
    for frame in frames:
        if frame.series_uid:
            key = ("uid", frame.series_uid)
        else:
            key = ("geometry", tuple(np.round(frame.orientation, 3)), frame.rows,
                   frame.columns, tuple(np.round(frame.pixel_spacing, 3)))
        groups[key].append(frame)
    return list(groups.values())


def describe(group: list[Frame]) -> str:
    """A series as a user recognises it, without UIDs (they can identify a patient)."""
    first = group[0]
    number = f"series {first.series_number}" if first.series_number else "series with no number"
    text = f'"{first.series_description}"' if first.series_description else "no description"
    return (f"{number} {text}: {len(group)} slices of {first.rows} x {first.columns}, "
            f"{first.pixel_spacing[0]:.3g} mm pixels")


def choose_series(groups: list[list[Frame]], series, folder: Path) -> list[Frame]:
    """The one series in the folder, or the one `series` names."""
    if series is not None:
        wanted = str(series)
        chosen = [g for g in groups if wanted in (g[0].series_number, g[0].series_description, g[0].series_uid)]
        if len(chosen) != 1:
            found = "no series" if not chosen else f"{len(chosen)} series"
            raise InputError(f"{folder}: {found} match series={series!r}; the folder holds: "
                             + "; ".join(describe(g) for g in groups))
        return chosen[0]
    if len(groups) > 1:
        raise InputError(
            f"{folder}: holds {len(groups)} series; move the one to use into a folder of its own and "
            "name that folder in the manifest: " + "; ".join(describe(g) for g in groups)
        )
    return groups[0]


def order_frames(frames: list[Frame], folder: Path) -> tuple[list[Frame], np.ndarray]:
    """Frames sorted along the slice normal, and the (z, y, x) -> LPS affine."""
    first = frames[0]
    _check_same_geometry(frames, folder)
    row_cos, col_cos = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_cos, col_cos)
    heights = np.array([np.dot(f.position, normal) for f in frames])
    order = np.argsort(heights, kind="stable")
    frames, heights = [frames[i] for i in order], heights[order]
    frames, heights = _drop_exact_duplicates(frames, heights, folder)
    dz = _check_steps(frames, heights, folder)
    _check_tilt(frames, normal, folder)
    dy, dx = first.pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = normal * dz
    affine[:3, 1] = col_cos * dy
    affine[:3, 2] = row_cos * dx
    affine[:3, 3] = frames[0].position
    return frames, affine


def _check_same_geometry(frames: list[Frame], folder: Path) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if np.max(np.abs(frame.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise InputError(
                f"{folder}: mixed slice orientations in one series: {first.name} has "
                f"{np.round(first.orientation, 4).tolist()}, {frame.name} has "
                f"{np.round(frame.orientation, 4).tolist()}"
            )
        if (frame.rows, frame.columns) != (first.rows, first.columns):
            raise InputError(f"{folder}: mixed image sizes: {first.name} is {first.rows} x "
                             f"{first.columns}, {frame.name} is {frame.rows} x {frame.columns}")
        if not np.allclose(frame.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise InputError(f"{folder}: mixed pixel spacing: {first.name} has {first.pixel_spacing} "
                             f"mm, {frame.name} has {frame.pixel_spacing} mm")


def _drop_exact_duplicates(frames, heights, folder):
    """Same position twice is an error, unless the two are the same image."""
    keep = [0]
    for i in range(1, len(frames)):
        if heights[i] - heights[keep[-1]] > DUPLICATE_MM:
            keep.append(i)
            continue
        a, b = frames[keep[-1]], frames[i]
        if not _same_image(a, b):
            raise InputError(
                f"{folder}: {a.name} and {b.name} are different images at the same "
                f"position ({heights[i]:.2f} mm along the normal); is this two series "
                "(e.g. two reconstructions) in one folder?"
            )
        log.info("%s: %s duplicates %s; using it once", folder, b.name, a.name)
    return [frames[i] for i in keep], heights[keep]


def _same_image(a: Frame, b: Frame) -> bool:
    return (a.slope, a.intercept) == (b.slope, b.intercept) and np.array_equal(
        decode_pixels(a), decode_pixels(b))


def _check_steps(frames, heights, folder) -> float:
    """Slice spacing from the positions, refusing gaps and irregular steps."""
    if len(frames) == 1:
        thickness = frames[0].dataset.get("SliceThickness", None)
        dz = float(thickness) if thickness else 1.0
        log.warning("%s: a single slice; using %.3g mm as slice spacing", folder, dz)
        return dz
    steps = np.diff(heights)
    dz = float(np.median(steps))
    for i, step in enumerate(steps):
        where = (f"between {frames[i].name} ({heights[i]:.2f} mm) and "
                 f"{frames[i + 1].name} ({heights[i + 1]:.2f} mm)")
        if step > GAP_FACTOR * dz:
            missing = round(step / dz) - 1
            raise InputError(f"{folder}: gap of {step:.3g} mm {where}, where slices are "
                             f"{dz:.3g} mm apart: about {missing} slice(s) missing")
        if abs(step - dz) > SPACING_TOLERANCE * dz + 1e-3:
            raise InputError(f"{folder}: irregular slice spacing: {step:.3g} mm {where}, "
                             f"while the median step is {dz:.3g} mm")
    return (heights[-1] - heights[0]) / (len(frames) - 1)


def _check_tilt(frames, normal, folder) -> None:
    """The stack must run along the normal; gantry-tilted series are sheared."""
    if len(frames) < 2:
        return
    travel = frames[-1].position - frames[0].position
    cosine = abs(np.dot(travel, normal)) / np.linalg.norm(travel)
    angle = float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    if angle > TILT_DEGREES:
        raise InputError(
            f"{folder}: the slices are stacked {angle:.1f} degrees off their normal "
            f"(gantry tilt, from {frames[0].name} to {frames[-1].name}); vfrac needs an "
            "orthogonal volume: resample the series first (e.g. dcm2niix corrects tilt)"
        )
