"""How far raters agree beyond chance: Cohen's kappa for two, Fleiss' kappa for several.

Intervals are percentile intervals of a bootstrap over the rated patients (seeded),
as the model's AUC intervals are. Pure functions on arrays of calls.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss_kappa


def cohen_kappa(first, second) -> float:
    """Cohen's kappa of two raters' calls on the same patients; NaN when chance agreement is certain."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"{first.shape} and {second.shape} calls: kappa needs one call each on the same patients")
    categories = np.union1d(first, second)
    if len(categories) < 2:  # both raters gave one call throughout: chance agreement is certain
        return math.nan
    return float(cohen_kappa_score(first, second))


def fleiss_kappa(counts) -> float:
    """Fleiss' kappa from an (patients x categories) table of how many raters chose each category.

    Every patient must have the same number of raters (at least two).
    """
    counts = np.asarray(counts, dtype=float)
    raters = counts.sum(axis=1)
    if counts.ndim != 2 or len(counts) == 0 or np.any(raters != raters[0]) or raters[0] < 2:
        raise ValueError("Fleiss' kappa needs a (patients x categories) table with the same number (>= 2) "
                         "of raters on every patient")
    if np.count_nonzero(counts.sum(axis=0)) < 2:  # one category throughout: chance agreement is certain
        return math.nan
    return float(statsmodels_fleiss_kappa(counts, method="fleiss"))


def category_counts(calls, categories=None) -> np.ndarray:
    """(patients x categories) counts from a (patients x raters) array of calls.

    `categories` (default: those in `calls`) keeps a column for a category a bootstrap
    resample happens to lack.
    """
    calls = np.asarray(calls)
    categories = np.unique(calls) if categories is None else categories
    return np.stack([(calls == c).sum(axis=1) for c in categories], axis=1)


def bootstrap_interval(statistic, calls, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of statistic(calls[resampled patients]) over `n_boot` resamples of the rows."""
    calls = np.asarray(calls)
    rng = np.random.default_rng(seed)
    values = [statistic(calls[rng.integers(0, len(calls), len(calls))]) for _ in range(n_boot)]
    values = np.asarray([v for v in values if not math.isnan(v)])
    if not values.size:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
