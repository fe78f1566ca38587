"""Feature and reader statistics against answers worked out by hand."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vfrac.stats.metrics import wilson_interval
from vfrac.stats.statistics import (
    delong_test,
    fisher_p,
    holm,
    mcnemar,
    odds_ratio,
    sign_table,
    unpaired_auc_difference,
    youden_threshold,
)


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


def test_delong_worked_by_hand():
    # positives X, negatives Y; psi(x, y) = 1 if x > y, 1/2 if tied, 0 otherwise
    labels = [1, 1, 1, 0, 0, 0]
    a = [0.9, 0.8, 0.4, 0.6, 0.3, 0.85]  # X = .9 .8 .4, Y = .6 .3 .85
    b = [0.7, 0.6, 0.5, 0.6, 0.8, 0.4]  # X = .7 .6 .5, Y = .6 .8 .4 (one tie: x .6 vs y .6)
    # V10 (per positive, mean psi over Y): a [1, 2/3, 1/3], b [2/3, 1/2, 1/3] -> AUC a 2/3, b 1/2
    # V01 (per negative, mean psi over X): a [2/3, 1, 1/3], b [1/2, 0, 1]
    # S10 (n - 1 = 2): var a = (1/9 + 0 + 1/9) / 2 = 1/9, var b = (1/36 + 0 + 1/36) / 2 = 1/36,
    #   cov = (1/3 x 1/6 + 0 + 1/3 x 1/6) / 2 = 1/18
    # S01: var a = (0 + 1/9 + 1/9) / 2 = 1/9, var b = (0 + 1/4 + 1/4) / 2 = 1/4,
    #   cov = (0 - 1/3 x 1/2 - 1/3 x 1/2) / 2 = -1/6
    # S = S10 / 3 + S01 / 3: var a = 2/27, var b = 5/54, cov = (1/18 - 1/6) / 3 = -1/27
    # var(a - b) = 2/27 + 5/54 + 2/27 = 13/54; z = (1/6) / sqrt(13/54), z^2 = 3/26
    result = delong_test(labels, a, b)
    assert (result["auc_a"], result["auc_b"]) == pytest.approx((2 / 3, 1 / 2))
    assert (result["auc_a"], result["auc_b"]) == pytest.approx((roc_auc_score(labels, a), roc_auc_score(labels, b)))
    assert result["difference"] == pytest.approx(1 / 6)
    assert result["se"] == pytest.approx(math.sqrt(13 / 54))
    assert result["z"] == pytest.approx(math.sqrt(3 / 26))
    assert result["p"] == pytest.approx(math.erfc(math.sqrt(3 / 26) / math.sqrt(2)))  # 0.734
    spread = 1.959964 * math.sqrt(13 / 54)
    assert result["ci"] == pytest.approx((1 / 6 - spread, 1 / 6 + spread))


def test_delong_agrees_with_sklearn_and_identical_scores_differ_by_nothing():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 80)
    a, b = labels + rng.normal(0, 1, 80), np.round(labels + rng.normal(0, 2, 80))  # b has many ties
    result = delong_test(labels, a, b)
    assert (result["auc_a"], result["auc_b"]) == pytest.approx((roc_auc_score(labels, a), roc_auc_score(labels, b)))
    assert result["auc_a"] > result["auc_b"] and result["p"] < 0.05 and result["ci"][0] > 0
    same = delong_test(labels, a, a)
    assert (same["difference"], same["z"], same["p"], same["ci"]) == (0.0, 0.0, 1.0, (0.0, 0.0))


def test_unpaired_auc_difference_worked_by_hand():
    # a: positives .9 .4, negatives .5 .1; V10 = [1, 1/2], V01 = [1/2, 1]; AUC 3/4,
    #    var = var(V10) / 2 + var(V01) / 2 = (1/8) / 2 + (1/8) / 2 = 1/8
    # b: every positive above every negative; AUC 1, var 0 (V10 and V01 constant)
    result = unpaired_auc_difference([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], [1, 1, 1, 0, 0], [0.9, 0.8, 0.7, 0.1, 0.2])
    assert (result["auc_a"], result["auc_b"], result["difference"]) == pytest.approx((0.75, 1.0, -0.25))
    assert result["se"] == pytest.approx(math.sqrt(1 / 8))
    spread = 1.959964 * math.sqrt(1 / 8)
    assert result["ci"] == pytest.approx((-0.25 - spread, -0.25 + spread))
    assert result["p"] == pytest.approx(math.erfc(0.25 / math.sqrt(1 / 8) / math.sqrt(2)))


def test_unpaired_variance_is_the_paired_tests_variance_of_one_auc():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 60)
    a = labels + rng.normal(0, 1, 60)
    constant = np.zeros(60)  # AUC 1/2 with no variance: the paired test's SE is a's own
    assert unpaired_auc_difference(labels, a, [0, 0, 1, 1], [0, 0, 0, 0])["se"] == pytest.approx(
        delong_test(labels, a, constant)["se"])
    with pytest.raises(ValueError, match="3 positive, 0 negative"):
        unpaired_auc_difference(labels, a, [1, 1, 1], [0.1, 0.2, 0.3])


@pytest.mark.parametrize(("labels", "a", "b", "message"), [
    ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "4 positive, 0 negative"),
    ([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "0 positive, 4 negative"),
    ([0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5], "at least 2 .*4 positive, 1 negative"),
    ([0, 1, 0, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4], "4 labels and 3, 4 scores"),
    ([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2], "4 labels and 4, 2 scores"),
    ([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], r"\[0, 1, 2\]"),
])
def test_delong_refuses_bad_input(labels, a, b, message):
    with pytest.raises(ValueError, match=message):
        delong_test(labels, a, b)


def test_holm_adjustment_worked_by_hand():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> kept monotone: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02]) and holm([]) == []
