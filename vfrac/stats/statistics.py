"""Tests a radiology paper reports beside the model: visual features and readers.

Odds ratios use Woolf's log interval, with Haldane's correction (0.5 added to every
cell) when a cell is empty; Fisher's exact test for the 2 x 2 table; McNemar's paired
test of two raters' calls on the same patients, exact (binomial) for fewer than 25
discordant pairs; Holm's step-down adjustment (statsmodels and SciPy compute these);
DeLong's test of two correlated ROC AUCs on the same patients (the
model against the radiomics baseline), and its unpaired form for two independent
cohorts (external validation against cross-validation). Pure functions on counts and arrays.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import fisher_exact, norm, rankdata
from sklearn.metrics import roc_curve
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.contingency_tables import mcnemar as mcnemar_test
from statsmodels.stats.multitest import multipletests

from vfrac.stats.metrics import wilson_interval

EXACT_BELOW = 25  # discordant pairs: fewer than this, McNemar's test is exact


def odds_ratio(a: int, b: int, c: int, d: int, z: float = 1.959964) -> tuple[float, float, float]:
    """(OR, low, high) of the table [[a, b], [c, d]] = [[exposed cases, exposed controls],
    [unexposed cases, unexposed controls]]."""
    if min(a, b, c, d) < 0:
        raise ValueError(f"counts must be >= 0, received {a, b, c, d}")
    cells = np.array([[a, b], [c, d]], dtype=float)
    # Haldane's correction adds 0.5 to every cell (statsmodels' shift_zeros would replace only the empty ones)
    table = Table2x2(cells + 0.5 if np.any(cells == 0) else cells, shift_zeros=False)
    low, high = table.oddsratio_confint(alpha=2 * norm.sf(z))
    return float(table.oddsratio), float(low), float(high)


def fisher_p(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher's exact p of [[a, b], [c, d]]."""
    return float(fisher_exact([[a, b], [c, d]], alternative="two-sided").pvalue)


def mcnemar(first_correct, second_correct, exact: bool | None = None) -> dict:
    """McNemar's test of two raters on the same cases: b = only the first right, c = only the second.

    exact: the binomial test; None chooses it below EXACT_BELOW discordant pairs.
    """
    first, second = np.asarray(first_correct, dtype=bool), np.asarray(second_correct, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"{first.size} and {second.size} calls: McNemar's test needs the same cases")
    b, c = int(np.sum(first & ~second)), int(np.sum(~first & second))
    exact = b + c < EXACT_BELOW if exact is None else exact
    p = 1.0 if b + c == 0 else float(mcnemar_test([[0, b], [c, 0]], exact=exact, correction=True).pvalue)
    return {"b": b, "c": c, "p": p, "method": "exact" if exact else "chi-square, continuity-corrected"}


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the order given."""
    p = np.asarray(p_values, dtype=float)
    return [float(v) for v in multipletests(p, method="holm")[1]] if p.size else []


def diagnostic_table(labels, calls) -> dict:
    """The 2 x 2 table of calls against the truth (1 = malignant), with sensitivity, specificity,
    PPV, NPV and accuracy, each with its Wilson 95% CI (NaN where its denominator is 0)."""
    truth, called = np.asarray(labels, dtype=bool), np.asarray(calls, dtype=bool)
    if truth.shape != called.shape:
        raise ValueError(f"{truth.size} labels but {called.size} calls")
    tp, fp = int(np.sum(called & truth)), int(np.sum(called & ~truth))
    fn, tn = int(np.sum(~called & truth)), int(np.sum(~called & ~truth))
    table = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    for name, top, bottom in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("ppv", tp, tp + fp),
                              ("npv", tn, tn + fn), ("accuracy", tp + tn, tp + fp + fn + tn)):
        table[name] = top / bottom if bottom else math.nan
        table[f"{name}_ci"] = wilson_interval(top, bottom)
    return table


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


def delong_test(labels, scores_a, scores_b, z: float = 1.959964) -> dict:
    """DeLong's test of AUC a = AUC b on the same cases (the scores are paired), with the 95% CI
    of the difference; the fast midrank algorithm of Sun & Xu (2014), ties counted 1/2."""
    y, a, b = np.asarray(labels), np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if y.ndim != 1 or a.shape != y.shape or b.shape != y.shape:
        raise ValueError(f"need one label and two scores per case, received {y.size} labels and "
                         f"{a.size}, {b.size} scores")
    aucs, covariance = _delong(y, np.stack([a, b]))
    error = math.sqrt(max(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1], 0.0))
    return _difference(float(aucs[0]), float(aucs[1]), error, z)


def unpaired_auc_difference(labels_a, scores_a, labels_b, scores_b, z: float = 1.959964) -> dict:
    """AUC a - AUC b on two independent samples (another site's patients against the CV cohort's):
    DeLong's variance of each AUC, added, for the difference's 95% CI and a z-test."""
    results = []
    for labels, scores in ((labels_a, scores_a), (labels_b, scores_b)):
        y, s = np.asarray(labels), np.asarray(scores, dtype=float)
        if y.ndim != 1 or s.shape != y.shape:
            raise ValueError(f"need one label per score, received {y.size} labels and {s.size} scores")
        results.append(_delong(y, s[None, :]))
    (auc_a, var_a), (auc_b, var_b) = ((float(aucs[0]), float(cov[0, 0])) for aucs, cov in results)
    return _difference(auc_a, auc_b, math.sqrt(max(var_a + var_b, 0.0)), z)


def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUC of each row of scores, their DeLong covariance) on the cases' 0/1 labels y."""
    if not set(np.unique(y)) <= {0, 1} or min(np.sum(y == 0), np.sum(y == 1)) < 2:
        raise ValueError(f"need 0/1 labels with at least 2 cases of each class, received values "
                         f"{np.unique(y)[:5].tolist()}: {int(np.sum(y == 1))} positive, {int(np.sum(y == 0))} negative")
    positives, negatives = scores[:, y == 1], scores[:, y == 0]
    m, n = positives.shape[1], negatives.shape[1]
    # midranks within the positives, within the negatives, and in all cases pooled
    pooled = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    v10 = (pooled[:, :m] - rankdata(positives, axis=1)) / n  # per positive: share of negatives it beats
    v01 = 1 - (pooled[:, m:] - rankdata(negatives, axis=1)) / m  # per negative: share of positives above it
    covariance = np.atleast_2d(np.cov(v10) / m + np.cov(v01) / n)
    return v10.mean(axis=1), covariance


def _difference(auc_a: float, auc_b: float, error: float, z: float) -> dict:
    difference = auc_a - auc_b
    statistic = difference / error if error else (0.0 if difference == 0 else math.copysign(math.inf, difference))
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": difference, "se": error,
            "z": statistic, "p": float(2 * norm.sf(abs(statistic))),
            "ci": (difference - z * error, difference + z * error)}
