"""Readers' agreement: kappas worked out by hand and a published example."""

import math

import numpy as np
import pytest

from vfrac.stats.agreement import bootstrap_interval, category_counts, cohen_kappa, fleiss_kappa
from vfrac.stats.statistics import diagnostic_table

# Fleiss (1971) as worked in the literature: 10 subjects, 14 raters, 5 categories -> kappa 0.210
FLEISS_EXAMPLE = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                  [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def test_cohen_kappa_by_hand():
    first = [1, 1, 0, 0, 1, 0, 1, 1, 0, 0]
    second = [1, 0, 0, 0, 1, 0, 1, 1, 1, 0]
    # observed 8/10; each rater says 1 half the time: chance 0.5; kappa (0.8 - 0.5) / 0.5 = 0.6
    assert cohen_kappa(first, second) == pytest.approx(0.6)
    assert cohen_kappa(first, first) == 1.0 and cohen_kappa([1, 0], [0, 1]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([1, 1], [1, 1]))  # chance agreement is certain
    with pytest.raises(ValueError):
        cohen_kappa([1, 0], [1])


def test_fleiss_kappa_of_the_published_example_and_from_calls():
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.2099, abs=1e-4)
    calls = np.array([["m", "m", "b"], ["b", "b", "b"], ["m", "m", "m"], ["b", "m", "b"]])
    counts = category_counts(calls)  # categories b, m
    np.testing.assert_array_equal(counts, [[1, 2], [3, 0], [0, 3], [2, 1]])
    # P_i = (1 + 4 - 3) / 6 = 1/3, 1, 1, 1/3 -> mean 2/3; shares 6/12, 6/12 -> chance 1/2; kappa 1/3
    assert fleiss_kappa(counts) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 1], [2, 1]])


def test_bootstrap_interval_holds_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    calls = np.stack([np.where(rng.random(200) < 0.85, truth, 1 - truth) for _ in range(2)], axis=1)
    kappa = cohen_kappa(calls[:, 0], calls[:, 1])
    low, high = bootstrap_interval(lambda c: cohen_kappa(c[:, 0], c[:, 1]), calls, n_boot=500)
    assert low < kappa < high and high - low < 0.4
    assert bootstrap_interval(lambda c: cohen_kappa(c[:, 0], c[:, 1]), calls, n_boot=500) == (low, high)


def test_diagnostic_table_with_ppv_and_npv_by_hand():
    labels = [1] * 10 + [0] * 10
    calls = [1] * 8 + [0] * 2 + [1] * 2 + [0] * 8  # tp 8, fn 2, fp 2, tn 8
    table = diagnostic_table(labels, calls)
    assert (table["tp"], table["fp"], table["fn"], table["tn"]) == (8, 2, 2, 8)
    assert table["ppv"] == table["npv"] == table["sensitivity"] == 0.8 and table["accuracy"] == 0.8
    assert table["ppv_ci"] == pytest.approx((0.4902, 0.9433), abs=1e-4)  # Wilson 8/10
    assert math.isnan(diagnostic_table([0, 0], [0, 0])["ppv"])  # nothing called malignant
