"""Where the maps put their weight, measured against the cohort's feature masks.

A feature mask (for example the soft tissue mass) is cut with the crop's own box and
resampled onto the network input, so map and mask share pixels. Per slice and
feature: the share of map energy inside the mask, the mask's share of the area, their
ratio (above 1: attention concentrates on the feature) and the pointing game (the
map's maximum inside the mask, within a small tolerance). A mask with no voxel on a
crop gives area 0 and no ratio or hit: the feature is not on that slice. Whether the
maps depend on the training at all is `explain.sanity`'s question.
"""

from __future__ import annotations

import math
from collections import defaultdict

import cv2
import numpy as np

COLUMNS = ("patient_id", "fold", "slice", "method", "feature", "energy_fraction", "area_fraction", "ratio",
           "pointing_hit")
SUMMARY_COLUMNS = ("method", "feature", "true_class", "call", "slices", "energy_fraction", "area_fraction",
                   "ratio", "pointing_hit_rate")
POINTING_TOLERANCE = 15 / 224  # of the input side: 15 px at 224, as in the pointing game of Zhang et al.


def mask_on_input(mask_slice: np.ndarray, transform, input_size: int) -> np.ndarray:
    """A full-slice mask (H, W) seen through the crop: (S, S) booleans on the network input.

    `transform` is `vfrac.data.crops.input_to_slice`'s (scale, row offset, column offset).
    """
    scale, row, col = transform
    matrix = np.array([[scale, 0.0, col], [0.0, scale, row]])
    resampled = cv2.warpAffine(np.asarray(mask_slice, dtype=np.float32), matrix, (input_size, input_size),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0.0)
    return resampled >= 0.5


def attention(cam: np.ndarray, mask: np.ndarray, tolerance: float = POINTING_TOLERANCE) -> dict:
    """energy_fraction, area_fraction, ratio and pointing_hit of one map against one mask."""
    cam = np.asarray(cam, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if cam.shape != mask.shape:
        raise ValueError(f"map {cam.shape} and mask {mask.shape} differ in shape")
    total, area = cam.sum(), mask.mean()
    energy = float((cam * mask).sum() / total) if total > 0 else math.nan
    if area == 0 or total == 0:
        return {"energy_fraction": energy, "area_fraction": float(area), "ratio": math.nan,
                "pointing_hit": math.nan}
    radius = int(round(tolerance * max(cam.shape)))
    near = cv2.dilate(mask.astype(np.uint8), np.ones((2 * radius + 1,) * 2, np.uint8)) if radius else mask
    return {"energy_fraction": energy, "area_fraction": float(area), "ratio": energy / area,
            "pointing_hit": float(bool(near.flat[int(np.argmax(cam))]))}


def summarize(rows: list[dict], outcomes: dict) -> list[dict]:
    """Means by method x feature x true class x correct/incorrect call.

    `outcomes` maps patient_id -> (true class name, "correct" or "incorrect"). Only
    slices where the feature is present (area > 0) count.
    """
    groups = defaultdict(list)
    for row in rows:
        if row["area_fraction"] > 0 and not math.isnan(row["energy_fraction"]):
            true_class, call = outcomes[row["patient_id"]]
            groups[(row["method"], row["feature"], true_class, call)].append(row)
    summary = []
    for (method, feature, true_class, call), members in sorted(groups.items()):
        means = {name: float(np.nanmean([m[name] for m in members]))
                 for name in ("energy_fraction", "area_fraction", "ratio", "pointing_hit")}
        summary.append({"method": method, "feature": feature, "true_class": true_class, "call": call,
                        "slices": len(members), "energy_fraction": means["energy_fraction"],
                        "area_fraction": means["area_fraction"], "ratio": means["ratio"],
                        "pointing_hit_rate": means["pointing_hit"]})
    return summary
