"""Where the maps put their weight, measured against the cohort's feature masks, and
whether the maps depend on what the network learnt at all (Adebayo et al., 2018).

A feature mask (for example the soft tissue mass) is cut with the crop's own box and
resampled onto the network input, so map and mask share pixels. Per slice and
feature: the share of map energy inside the mask, the mask's share of the area, their
ratio (above 1: attention concentrates on the feature) and the pointing game (the
map's maximum inside the mask, within a small tolerance). A mask with no voxel on a
crop gives area 0 and no ratio or hit: the feature is not on that slice.
"""

from __future__ import annotations

import math
from collections import defaultdict

import cv2
import keras
import numpy as np
from scipy.stats import spearmanr

COLUMNS = ("patient_id", "fold", "slice", "method", "feature", "energy_fraction", "area_fraction", "ratio",
           "pointing_hit")
SUMMARY_COLUMNS = ("method", "feature", "true_class", "call", "slices", "energy_fraction", "area_fraction",
                   "ratio", "pointing_hit_rate")
POINTING_TOLERANCE = 15 / 224  # of the input side: 15 px at 224, as in the pointing game of Zhang et al.
# Randomised from the top, cumulatively: head, then ResNet50's stages down to the first.
CASCADE = ("malignancy", "conv5", "conv4", "conv3", "conv2", "conv1")
RANDOMIZATION_SEEDS = (2018, 2019, 2020)  # not the training seeds (run seed + fold)
SANITY_LIMIT = 0.5  # mean rank correlation with a randomised network at or above this: the method fails


def mask_on_input(mask_slice: np.ndarray, transform, input_size: int) -> np.ndarray:
    """A full-slice mask (H, W) seen through the crop: (S, S) booleans on the network input.

    `transform` is `vfrac.pipeline.input_to_slice`'s (scale, row offset, column offset).
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


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two maps: 0 when one of them is flat, NaN when both are."""
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return math.nan
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomized_cascade(model: keras.Model, seed: int = RANDOMIZATION_SEEDS[0]):
    """(stage, model) with weights re-initialised from the top down to `stage`, cumulatively.

    The last stage, "conv1", leaves no trained weight: the fully randomised network.
    The seed differs from the training seeds (run seed + fold): with the same seed a
    briefly trained layer would be "re-initialised" to nearly its own weights.
    Every stage yields the same model, re-initialised further in place (cloning
    ResNet50 once per stage cost more than its maps): use it before the next stage.
    """
    keras.utils.set_random_seed(seed)
    fresh = keras.models.clone_model(model)  # new layers, new initial weights
    randomized = keras.models.clone_model(model)
    randomized.set_weights(model.get_weights())
    for stage in CASCADE:
        for layer in randomized.layers:
            if layer.name.startswith(stage):
                layer.set_weights(fresh.get_layer(layer.name).get_weights())
        yield stage, randomized


def sanity_check(trained_maps: dict, randomized_maps: dict) -> list[dict]:
    """Rows (method, randomized_to, spearman_mean, spearman_sd, images, draws, flagged).

    trained_maps: method -> (n, S, S); randomized_maps: (method, stage) -> a list of
    (n, S, S), one per random draw. One draw is not enough: whether a random head
    happens to agree in sign with the trained one swings the correlation, so the
    mean is over every image of every draw.
    A method is flagged when its maps from the fully randomised network (stage "conv1")
    still agree with the trained ones: it then shows the image, not what was learnt.
    The cascade's earlier stages are reported, not judged.
    """
    rows = []
    for (method, stage), draws in randomized_maps.items():
        rhos = [rank_correlation(t, r) for maps in draws for t, r in zip(trained_maps[method], maps, strict=True)]
        rhos = [r for r in rhos if not math.isnan(r)]
        rows.append({"method": method, "randomized_to": stage,
                     "spearman_mean": float(np.mean(rhos)) if rhos else math.nan,
                     "spearman_sd": float(np.std(rhos)) if rhos else math.nan,
                     "images": len(trained_maps[method]), "draws": len(draws)})
    failing = {r["method"] for r in rows if r["randomized_to"] == CASCADE[-1] and r["spearman_mean"] >= SANITY_LIMIT}
    for row in rows:
        row["flagged"] = int(row["method"] in failing)
    return rows
