"""Square boxes around the ROI and 3-slice stacks (z-1, z, z+1) cut with them.

The study used the smallest square bounding box around the ROI of the most abnormal
vertebra; a margin (a fraction of the box side on each side) adds the surroundings
where a soft tissue mass would be. Pure functions on arrays: no I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AIR_HU = -1000
BOX_MODES = ("slice", "union")


@dataclass(frozen=True)
class Box:
    """A square on slice `z`: rows y0..y0+size-1, columns x0..x0+size-1 (may leave the image)."""

    z: int
    y0: int
    x0: int
    size: int

    def grown(self, fraction: float) -> Box:
        """The square around the same centre, `fraction` of the side bigger on each side."""
        extra = int(round(self.size * fraction))
        return Box(self.z, self.y0 - extra, self.x0 - extra, self.size + 2 * extra)


def input_to_slice(box, context: float, cache_size: int, input_size: int) -> tuple[float, float, float]:
    """(scale, row offset, column offset): input pixel (r, c) of an evaluation image lies at
    (offset_row + scale r, offset_col + scale c) on its full axial slice (pixel centres).

    `box` is the crop's ROI square (y0, x0, size); the chain is the cache's square grown
    by `context` and resized to `cache_size`, then `vfrac.data.pipeline.make_transform`'s
    centred warp without augmentation.
    """
    grown = Box(0, *(int(v) for v in box)).grown(context)
    step = cache_size / (1.0 + 2.0 * context) / input_size  # cache pixels per input pixel
    cache_origin = (cache_size - 1) / 2.0 - step * (input_size - 1) / 2.0
    to_slice = grown.size / cache_size  # slice pixels per cache pixel (cv2.resize, pixel centres)
    scale = step * to_slice
    offset = (cache_origin + 0.5) * to_slice - 0.5
    return scale, grown.y0 + offset, grown.x0 + offset


def lesion_slices(roi: np.ndarray, min_area: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(kept, dropped): slices of the ROI whose ROI area is at least `min_area` of its largest.

    A whole-vertebra ROI reaches slices that show only the spinous process or the edge
    of the body (a tenth to a third of the largest area) while the body, where the
    fracture is, fills 0.6-1; every crop carries the patient's label, so the small
    ones teach the network noise and, under the max rule, can decide a patient's call.
    """
    if not 0.0 <= min_area <= 1.0:
        raise ValueError(f"min_area must be in [0, 1], received {min_area}")
    areas = np.asarray(roi, dtype=bool).sum(axis=(1, 2))
    slices = np.flatnonzero(areas)
    keep = areas[slices] >= min_area * areas.max() if slices.size else np.zeros(0, bool)
    return slices[keep], slices[~keep]


def roi_boxes(roi: np.ndarray, margin: float = 0.1, mode: str = "slice", min_area: float = 0.0) -> list[Box]:
    """One square per kept ROI slice (see `lesion_slices`), in slice order.

    mode "slice": the smallest square around that slice's ROI; "union": one square
    around the ROI of all kept slices, used on each of them.
    """
    if mode not in BOX_MODES:
        raise ValueError(f"box mode must be one of {BOX_MODES}, received {mode!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, received {margin}")
    roi = np.asarray(roi, dtype=bool)
    slices, _ = lesion_slices(roi, min_area)
    if mode == "union":
        union = _square(roi[slices].any(axis=0), margin)
        return [Box(int(z), *union) for z in slices]
    return [Box(int(z), *_square(roi[z], margin)) for z in slices]


def _square(plane: np.ndarray, margin: float) -> tuple[int, int, int]:
    """(y0, x0, size) of the smallest square around a 2-D mask, grown, fitted in the image."""
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    size = math.ceil(max(height, width) * (1 + 2 * margin))
    y0 = _fit(rows[0] - (size - height) // 2, size, plane.shape[0])
    x0 = _fit(cols[0] - (size - width) // 2, size, plane.shape[1])
    return int(y0), int(x0), int(size)


def _fit(start: int, size: int, length: int) -> int:
    """Shift a span inside [0, length) where it fits; it still covers what it covered."""
    return min(max(start, 0), length - size) if size <= length else start


def crop_stack(hu: np.ndarray, box: Box, pad_value: float = AIR_HU) -> np.ndarray:
    """Slices (z-1, z, z+1) cut with the box, as (size, size, 3); air outside the image.

    At the first and last slice the missing neighbour repeats the edge slice.
    """
    depth, height, width = hu.shape
    planes = [min(max(z, 0), depth - 1) for z in (box.z - 1, box.z, box.z + 1)]
    out = np.full((box.size, box.size, 3), pad_value, dtype=hu.dtype)
    y_lo, y_hi = max(box.y0, 0), min(box.y0 + box.size, height)
    x_lo, x_hi = max(box.x0, 0), min(box.x0 + box.size, width)
    if y_hi > y_lo and x_hi > x_lo:
        window = hu[planes, y_lo:y_hi, x_lo:x_hi]
        out[y_lo - box.y0:y_hi - box.y0, x_lo - box.x0:x_hi - box.x0] = np.moveaxis(window, 0, -1)
    return out
