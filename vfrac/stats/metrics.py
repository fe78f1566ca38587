"""The study's numbers: per slice and per patient, with honest confidence intervals.

Slices of one patient are not independent, so every bootstrap here resamples
patients and takes all of a resampled patient's slices with it. Proportions get
Wilson intervals; AUC and slice-level metrics get the patient bootstrap.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from statsmodels.stats.proportion import proportion_confint

AGGREGATIONS = ("max", "mean", "topk")
PROPORTIONS = {  # metric -> (numerator cells, denominator cells)
    "sensitivity": ("tp", ("tp", "fn")),
    "specificity": ("tn", ("tn", "fp")),
    "accuracy": (("tp", "tn"), ("tp", "tn", "fp", "fn")),
    "ppv": ("tp", ("tp", "fp")),
    "npv": ("tn", ("tn", "fn")),
}


def confusion(labels, probabilities, threshold: float = 0.5) -> dict[str, int]:
    y, called = np.asarray(labels).astype(bool), np.asarray(probabilities) >= threshold
    return {"tp": int(np.sum(y & called)), "fn": int(np.sum(y & ~called)),
            "tn": int(np.sum(~y & ~called)), "fp": int(np.sum(~y & called))}


def binary_metrics(labels, probabilities, threshold: float = 0.5) -> dict[str, float]:
    """Sensitivity, specificity, accuracy, PPV, NPV, F1, AUC and the confusion counts."""
    cells = confusion(labels, probabilities, threshold)
    result = {name: _ratio(cells, top, bottom) for name, (top, bottom) in PROPORTIONS.items()}
    precision, recall = result["ppv"], result["sensitivity"]
    result["f1"] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
    result["auc"] = auc(labels, probabilities)
    return result | cells


def auc(labels, probabilities) -> float:
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, probabilities)) if len(np.unique(labels)) == 2 else float("nan")


def aggregate(patient_ids, probabilities, labels, method: str = "max", k: int = 3):
    """One probability per patient: the max of its slices (the study), the mean, or the top-k mean.

    Returns (patient ids in first-seen order, labels, probabilities).
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, received {method!r}")
    ids = list(dict.fromkeys(patient_ids))
    position = {pid: i for i, pid in enumerate(ids)}
    groups = [[] for _ in ids]
    group_labels = [None] * len(ids)
    for pid, p, y in zip(patient_ids, probabilities, labels, strict=True):
        groups[position[pid]].append(float(p))
        if group_labels[position[pid]] not in (None, y):
            raise ValueError(f"patient {pid} has slices with different labels")
        group_labels[position[pid]] = y
    if method == "max":
        values = [max(g) for g in groups]
    elif method == "mean":
        values = [float(np.mean(g)) for g in groups]
    else:
        values = [float(np.mean(sorted(g)[-k:])) for g in groups]
    return ids, np.asarray(group_labels), np.asarray(values)


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (sound for small n and for 0 or n successes)."""
    if total == 0:
        return float("nan"), float("nan")
    low, high = proportion_confint(successes, total, alpha=2 * norm.sf(z), method="wilson")
    # at 0 or n successes one bound is exactly 0 or 1; rounding error would print -0.00
    low = 0.0 if successes == 0 else max(0.0, float(low))
    high = 1.0 if successes == total else min(1.0, float(high))
    return low, high


def patient_bootstrap(patient_ids, labels, probabilities, statistic, n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile CIs of statistic(labels, probabilities) -> {name: value}, resampling
    patients with all their slices."""
    ids = np.asarray(patient_ids)
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    unique, inverse = np.unique(ids, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(unique))]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        chosen = np.concatenate([members[i] for i in rng.integers(0, len(unique), len(unique))])
        for name, value in statistic(labels[chosen], probabilities[chosen]).items():
            samples.setdefault(name, [])
            if np.isfinite(value):
                samples[name].append(value)
    tail = (1 - level) / 2 * 100
    return {name: (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail))) if v
            else (float("nan"), float("nan")) for name, v in samples.items()}


def evaluate(patient_ids, labels, probabilities, threshold: float = 0.5, aggregation: str = "max",
             k: int = 3, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per-slice and per-patient metrics, each with a 95% CI (`<name>_ci`)."""
    labels, probabilities = np.asarray(labels).astype(int), np.asarray(probabilities, dtype=float)
    slices = binary_metrics(labels, probabilities, threshold)
    names = (*PROPORTIONS, "auc")

    def statistic(y, p):
        metrics = binary_metrics(y, p, threshold)
        return {name: metrics[name] for name in names}

    intervals = patient_bootstrap(patient_ids, labels, probabilities, statistic, n_boot, seed)
    slices |= {f"{name}_ci": intervals[name] for name in names}
    ids, patient_labels, patient_probabilities = aggregate(patient_ids, probabilities, labels, aggregation, k)
    patients = binary_metrics(patient_labels, patient_probabilities, threshold)
    for name, (top, bottom) in PROPORTIONS.items():
        successes = sum(patients[c] for c in ((top,) if isinstance(top, str) else top))
        patients[f"{name}_ci"] = wilson_interval(successes, sum(patients[c] for c in bottom))
    patients["auc_ci"] = patient_bootstrap(ids, patient_labels, patient_probabilities,
                                           lambda y, p: {"auc": auc(y, p)}, n_boot, seed)["auc"]
    return {"slice": slices, "patient": patients}


def roc_points(labels, probabilities) -> dict[str, list[float]]:
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": np.minimum(thresholds, 1.0).tolist()}


def calibration(labels, probabilities, bins: int = 10) -> dict:
    """Brier score, reliability bins, the calibration slope and calibration-in-the-large.

    Slope: of the logistic regression of the outcome on logit p (1 is ideal).
    Calibration-in-the-large: the intercept with the slope fixed at 1 (logit p as an
    offset; 0 is ideal, above 0 the model predicts too low on average). The intercept
    of the joint fit is neither, so it is not reported.
    """
    y, p = np.asarray(labels).astype(float), np.clip(np.asarray(probabilities, dtype=float), 1e-6, 1 - 1e-6)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    reliability = [{"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(np.sum(which == b)),
                    "mean_predicted": float(p[which == b].mean()) if np.any(which == b) else float("nan"),
                    "observed": float(y[which == b].mean()) if np.any(which == b) else float("nan")}
                   for b in range(bins)]
    slope = in_the_large = float("nan")
    if len(np.unique(y)) == 2:
        logit = np.log(p / (1 - p))
        slope = float(LogisticRegression(C=1e6).fit(logit.reshape(-1, 1), y).coef_[0, 0])
        in_the_large = _offset_intercept(y, logit)
    return {"brier": float(np.mean((p - y) ** 2)), "bins": reliability, "slope": slope,
            "in_the_large": in_the_large}


def _offset_intercept(y: np.ndarray, offset: np.ndarray) -> float:
    """Maximum-likelihood a of P(y = 1) = sigmoid(a + offset), by Newton's method (one concave unknown)."""
    a = 0.0
    for _ in range(100):
        q = 1.0 / (1.0 + np.exp(-(a + offset)))
        step = np.sum(y - q) / max(np.sum(q * (1.0 - q)), 1e-12)
        a += step
        if abs(step) < 1e-12:
            break
    return float(a)


def _ratio(cells, top, bottom) -> float:
    numerator = sum(cells[c] for c in ((top,) if isinstance(top, str) else top))
    denominator = sum(cells[c] for c in bottom)
    return numerator / denominator if denominator else float("nan")
