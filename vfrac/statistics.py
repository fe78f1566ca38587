"""Tests a radiology paper reports beside the model: visual features and readers.

Odds ratios use Woolf's log interval, with Haldane's correction (0.5 added to every
cell) when a cell is empty; Fisher's exact test for the 2 x 2 table; McNemar's paired
test of two raters' calls on the same patients, exact (binomial) for fewer than 25
discordant pairs. Pure functions on counts and arrays.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest, chi2, fisher_exact
from sklearn.metrics import roc_curve

from vfrac.metrics import wilson_interval

EXACT_BELOW = 25  # discordant pairs: fewer than this, McNemar's test is exact


def odds_ratio(a: int, b: int, c: int, d: int, z: float = 1.959964) -> tuple[float, float, float]:
    """(OR, low, high) of the table [[a, b], [c, d]] = [[exposed cases, exposed controls],
    [unexposed cases, unexposed controls]]."""
    if min(a, b, c, d) < 0:
        raise ValueError(f"counts must be >= 0, received {a, b, c, d}")
    if 0 in (a, b, c, d):
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    value = (a * d) / (b * c)
    spread = z * math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    return value, value * math.exp(-spread), value * math.exp(spread)


def fisher_p(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher's exact p of [[a, b], [c, d]]."""
    return float(fisher_exact([[a, b], [c, d]], alternative="two-sided").pvalue)


def mcnemar(first_correct, second_correct) -> dict:
    """McNemar's test of two raters on the same cases: b = only the first right, c = only the second."""
    first, second = np.asarray(first_correct, dtype=bool), np.asarray(second_correct, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"{first.size} and {second.size} calls: McNemar's test needs the same cases")
    b, c = int(np.sum(first & ~second)), int(np.sum(~first & second))
    if b + c == 0:
        return {"b": b, "c": c, "p": 1.0, "method": "exact"}
    if b + c < EXACT_BELOW:
        return {"b": b, "c": c, "p": float(binomtest(b, b + c, 0.5).pvalue), "method": "exact"}
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    return {"b": b, "c": c, "p": float(chi2.sf(statistic, 1)), "method": "chi-square, continuity-corrected"}


def sign_table(present, malignant) -> dict:
    """A feature read as a sign of malignancy: counts, sensitivity and specificity with
    Wilson CIs, odds ratio with CI, Fisher p."""
    present, malignant = np.asarray(present, dtype=bool), np.asarray(malignant, dtype=bool)
    a, b = int(np.sum(present & malignant)), int(np.sum(present & ~malignant))
    c, d = int(np.sum(~present & malignant)), int(np.sum(~present & ~malignant))
    value, low, high = odds_ratio(a, b, c, d)
    return {"malignant_with": a, "malignant": a + c, "benign_with": b, "benign": b + d,
            "sensitivity": a / (a + c) if a + c else math.nan, "sensitivity_ci": wilson_interval(a, a + c),
            "specificity": d / (b + d) if b + d else math.nan, "specificity_ci": wilson_interval(d, b + d),
            "odds_ratio": value, "odds_ratio_ci": (low, high), "fisher_p": fisher_p(a, b, c, d)}


def youden_threshold(labels, probabilities) -> tuple[float, float]:
    """(threshold, J) maximising sensitivity + specificity - 1 on these data (exploratory)."""
    fpr, tpr, thresholds = roc_curve(np.asarray(labels).astype(int), probabilities)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0)), float(tpr[best] - fpr[best])
