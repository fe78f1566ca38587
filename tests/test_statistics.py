"""Feature and reader statistics against answers worked out by hand."""

import math

import pytest

from vfrac.metrics import wilson_interval
from vfrac.statistics import fisher_p, mcnemar, odds_ratio, sign_table, youden_threshold


def test_odds_ratio_and_woolf_interval():
    value, low, high = odds_ratio(10, 5, 3, 12)
    assert value == 8.0  # (10 x 12) / (5 x 3)
    spread = 1.959964 * math.sqrt(1 / 10 + 1 / 5 + 1 / 3 + 1 / 12)
    assert (low, high) == pytest.approx((8.0 * math.exp(-spread), 8.0 * math.exp(spread)))
    assert (low, high) == pytest.approx((1.5223, 42.042), abs=1e-3)
    # an empty cell: Haldane's 0.5 in every cell, (5.5 x 7.5) / (0.5 x 3.5)
    assert odds_ratio(5, 0, 3, 7)[0] == pytest.approx(41.25 / 1.75)
    with pytest.raises(ValueError):
        odds_ratio(-1, 2, 3, 4)


def test_fisher_exact_by_enumerating_the_hypergeometric():
    # margins: rows 15 and 15, columns 13 and 17, 30 in all
    def probability(a):
        return math.comb(13, a) * math.comb(17, 15 - a) / math.comb(30, 15)

    observed = probability(10)
    expected = sum(probability(a) for a in range(0, 14) if probability(a) <= observed * (1 + 1e-9))
    assert fisher_p(10, 5, 3, 12) == pytest.approx(expected)
    assert fisher_p(2, 2, 2, 2) == pytest.approx(1.0)


def test_mcnemar_exact_and_large_sample():
    # b = 1 (first right only), c = 6: exact p = 2 x (C(7,0) + C(7,1)) / 2^7 = 0.125
    first = [True] * 1 + [False] * 6 + [True] * 5
    second = [False] * 1 + [True] * 6 + [True] * 5
    result = mcnemar(first, second)
    assert (result["b"], result["c"], result["method"]) == (1, 6, "exact")
    assert result["p"] == pytest.approx(0.125)
    # b = 30, c = 10: chi-square (|30 - 10| - 1)^2 / 40 = 9.025 on 1 df, p = erfc(sqrt(9.025 / 2))
    big = mcnemar([True] * 30 + [False] * 10, [False] * 30 + [True] * 10)
    assert big["method"].startswith("chi-square") and big["p"] == pytest.approx(math.erfc(math.sqrt(4.5125)))
    assert mcnemar([True, False], [True, False])["p"] == 1.0
    with pytest.raises(ValueError, match="same cases"):
        mcnemar([True], [True, False])


def test_wilson_interval_known_value():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_sign_table_counts_and_rates():
    present = [1, 1, 1, 0, 1, 0, 0, 0]
    malignant = [1, 1, 1, 1, 0, 0, 0, 0]
    stats = sign_table(present, malignant)
    assert (stats["malignant_with"], stats["malignant"], stats["benign_with"], stats["benign"]) == (3, 4, 1, 4)
    assert stats["sensitivity"] == 0.75 and stats["specificity"] == 0.75
    assert stats["odds_ratio"] == 9.0 and stats["sensitivity_ci"] == wilson_interval(3, 4)


def test_youden_threshold_by_hand():
    # at 0.8: sensitivity 0.5, specificity 1 (J 0.5); at 0.35: 1 and 0.5 (J 0.5); the first is kept
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx((0.8, 0.5))
