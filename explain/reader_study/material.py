"""What a reader sees of a case, as PNG images: the CT around the vertebra in two windows, and the maps.

Each slice is shown over the network input's field of view, resampled from the CT at
its own resolution (one display pixel per CT pixel), not from the network's small
input: the reader reads the CT, the map says where the network's evidence lay on it.
Maps are RGBA layers (jet colour, transparent where the map is 0) laid over the CT in
the browser, so the reader can toggle them and set their opacity. No image carries text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from explain.attention import attention
from explain.overlay import PNG_COMPRESSION
from vfrac.data.crops import AIR_HU
from vfrac.data.window import BONE_WINDOW, SOFT_TISSUE_WINDOW, grey

DISPLAY_LIMIT = 512  # display pixels across a crop at most (a larger field of view is downsampled)


@dataclass
class CaseImages:
    """One case's PNGs by (slice index, kind), and how its shown maps lie on the lesion."""

    slices: list  # z of each shown slice, in display order
    display_size: int
    pngs: dict = field(default_factory=dict)  # (slice index, kind) -> PNG bytes
    lesion_slices: int = 0
    map_energy_ratio: float | None = None  # mean over slices with lesion; None without feature masks
    map_pointing_hit: float | None = None


def display_side(transform, input_size: int) -> int:
    """Display pixels across a crop: one per CT pixel of its field of view, within [input size, DISPLAY_LIMIT]."""
    return int(np.clip(round(transform[0] * input_size), input_size, DISPLAY_LIMIT))


def display_matrix(transform, input_size: int, side: int) -> np.ndarray:
    """The 2 x 3 matrix from display pixels to slice pixels of one crop shown `side` pixels across.

    `transform` is `vfrac.data.crops.input_to_slice`'s (scale, row, column): input pixel
    (r, c) lies at (row + scale r, column + scale c) on the slice. The display spans the
    same field of view, pixel centres aligned as cv2.resize aligns them between the input
    and the display.
    """
    scale, row, col = transform
    step = input_size / side  # input pixels per display pixel
    shift = scale * (0.5 * step - 0.5)
    return np.array([[scale * step, 0.0, col + shift], [0.0, scale * step, row + shift]])


def on_display(plane: np.ndarray, matrix: np.ndarray, side: int, fill: float, nearest: bool = False) -> np.ndarray:
    """A full-slice plane resampled onto the display grid."""
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(np.asarray(plane, dtype=np.float32), matrix, (side, side), flags=flags,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))


def heat_layer(cam: np.ndarray, side: int) -> np.ndarray:
    """(side, side, 4) BGRA: the map's jet colour, opaque where the map is 1, clear where it is 0."""
    fine = np.clip(cv2.resize(np.asarray(cam, dtype=np.float32), (side, side), interpolation=cv2.INTER_LINEAR), 0, 1)
    colour = cv2.applyColorMap((fine * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return np.dstack([colour, (fine * 255).round().astype(np.uint8)])


def png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def case_images(hu: np.ndarray, lesion: np.ndarray | None, slices, transforms, input_size: int, maps: np.ndarray,
                other: np.ndarray) -> CaseImages:
    """The PNGs of one case's slices (z in `slices`, each with its crop's transform).

    hu: the CT volume (Z, H, W); lesion: the union of the case's feature masks on the
    same grid, or None; maps / other: (n, S, S) maps of the shown class and of the other
    class, on the network input. Every crop of a case is displayed at the size of the
    first (the crops of one vertebra differ by a few pixels), so scrolling does not jump.
    """
    side = display_side(transforms[0], input_size)
    shown = CaseImages(slices=[int(z) for z in slices], display_size=side)
    ratios, hits = [], []
    for k, (z, transform) in enumerate(zip(slices, transforms, strict=True)):
        matrix = display_matrix(transform, input_size, side)
        ct = on_display(hu[z], matrix, side, AIR_HU)
        shown.pngs[(k, "bone")] = png(grey(ct, BONE_WINDOW))
        shown.pngs[(k, "soft")] = png(grey(ct, SOFT_TISSUE_WINDOW))
        shown.pngs[(k, "map")] = png(heat_layer(maps[k], side))
        shown.pngs[(k, "other")] = png(heat_layer(other[k], side))
        if lesion is not None:
            mask = on_display(lesion[z], matrix, side, 0.0, nearest=True) >= 0.5
            shown.pngs[(k, "lesion")] = png(mask.astype(np.uint8) * 255)
            if mask.any():
                shown.lesion_slices += 1
                measured = attention(cv2.resize(np.asarray(maps[k], np.float32), (side, side)), mask)
                if not math.isnan(measured["ratio"]):
                    ratios.append(measured["ratio"])
                    hits.append(measured["pointing_hit"])
    if ratios:
        shown.map_energy_ratio, shown.map_pointing_hit = float(np.mean(ratios)), float(np.mean(hits))
    return shown


def decode_mask(data: bytes) -> np.ndarray:
    """A stored lesion PNG back as booleans."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) >= 128
