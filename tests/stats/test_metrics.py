"""Metrics against answers worked out by hand."""

import numpy as np
import pytest

from vfrac.stats.metrics import (
    aggregate,
    binary_metrics,
    calibration,
    evaluate,
    patient_bootstrap,
    roc_points,
    wilson_interval,
)


def test_confusion_and_proportions_by_hand():
    labels = [1, 1, 1, 1, 0, 0, 0]
    probabilities = [0.9, 0.6, 0.4, 0.5, 0.2, 0.7, 0.1]  # 0.5 counts as malignant
    m = binary_metrics(labels, probabilities)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (3, 1, 2, 1)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["ppv"] == pytest.approx(3 / 4) and m["npv"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(0.75)
    # AUC: of the 12 (malignant, benign) pairs the malignant slice ranks higher in 9:
    # 0.9 beats all three benign; 0.6, 0.5 and 0.4 beat 0.2 and 0.1 but not 0.7.
    assert m["auc"] == pytest.approx(9 / 12)


def test_max_mean_and_topk_aggregation_on_a_hand_made_table():
    ids = ["A", "A", "A", "B", "B", "C"]
    probabilities = [0.2, 0.9, 0.4, 0.3, 0.1, 0.6]
    labels = [1, 1, 1, 0, 0, 1]
    patients, y, p = aggregate(ids, probabilities, labels, "max")
    assert patients == ["A", "B", "C"] and y.tolist() == [1, 0, 1] and p.tolist() == [0.9, 0.3, 0.6]
    assert aggregate(ids, probabilities, labels, "mean")[2] == pytest.approx([0.5, 0.2, 0.6])
    assert aggregate(ids, probabilities, labels, "topk", k=2)[2] == pytest.approx([0.65, 0.2, 0.6])
    with pytest.raises(ValueError, match="different labels"):
        aggregate(["A", "A"], [0.1, 0.2], [0, 1])


def test_wilson_interval_known_values():
    # 8 of 10: the textbook Wilson 95% interval is 0.490 .. 0.943
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.1611, abs=1e-4)
    for total in range(1, 200):  # at 0 and n successes the bounds are 0 and 1, never -0.00 or 1.0000001
        assert wilson_interval(0, total)[0] == 0.0 and f"{wilson_interval(0, total)[0]:.2f}" == "0.00"
        assert wilson_interval(total, total)[1] == 1.0


def test_patient_bootstrap_contains_the_estimate_and_narrows_with_more_patients():
    rng = np.random.default_rng(0)

    def cohort(n):
        ids = np.repeat(np.arange(n), 5)
        y = np.repeat(rng.integers(0, 2, n), 5)
        p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, len(y)), 0, 1)
        return ids, y, p

    widths = []
    for n in (30, 300):
        ids, y, p = cohort(n)
        estimate = binary_metrics(y, p)["auc"]
        low, high = patient_bootstrap(ids, y, p, lambda a, b: {"auc": binary_metrics(a, b)["auc"]}, 300)["auc"]
        assert low <= estimate <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_evaluate_reports_slice_and_patient_metrics_with_intervals():
    ids = ["A", "A", "B", "B", "C", "C", "D", "D"]
    labels = [1, 1, 0, 0, 1, 1, 0, 0]
    probabilities = [0.8, 0.3, 0.2, 0.6, 0.4, 0.45, 0.1, 0.3]
    result = evaluate(ids, labels, probabilities, n_boot=200)
    patient = result["patient"]  # max: A 0.8 (TP), B 0.6 (FP), C 0.45 (FN), D 0.3 (TN)
    assert (patient["tp"], patient["fp"], patient["fn"], patient["tn"]) == (1, 1, 1, 1)
    assert patient["sensitivity_ci"] == pytest.approx(wilson_interval(1, 2))
    assert result["slice"]["tp"] == 1 and result["slice"]["fp"] == 1
    low, high = result["slice"]["accuracy_ci"]
    assert low <= result["slice"]["accuracy"] <= high


def test_roc_and_calibration():
    labels = [0, 0, 1, 1]
    points = roc_points(labels, [0.1, 0.4, 0.35, 0.8])
    assert points["fpr"][0] == 0 and points["tpr"][-1] == 1
    perfect = calibration([0, 1] * 50, [0.0, 1.0] * 50)
    assert perfect["brier"] == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 4000)
    y = rng.random(4000) < p  # calibrated by construction
    result = calibration(y, p)
    assert result["slope"] == pytest.approx(1.0, abs=0.15) and result["in_the_large"] == pytest.approx(0.0, abs=0.1)
    assert "intercept" not in result  # the joint fit's intercept is not calibration-in-the-large
    assert sum(b["count"] for b in result["bins"]) == 4000


def test_calibration_in_the_large_by_hand():
    # every prediction 0.2 (logit -ln 4), half the patients malignant: the offset model's intercept
    # must lift logit 0.2 to logit 0.5 = 0, so a = ln 4 = 1.386
    y, p = [0, 1] * 20, [0.2] * 40
    assert calibration(y, p)["in_the_large"] == pytest.approx(np.log(4.0), abs=1e-9)
    # predictions 0.5, three in four malignant: a = logit 0.75 = ln 3
    assert calibration([1, 1, 1, 0] * 10, [0.5] * 40)["in_the_large"] == pytest.approx(np.log(3.0), abs=1e-9)
    # predicting too high gives a negative value
    assert calibration([0, 0, 0, 1] * 10, [0.5] * 40)["in_the_large"] == pytest.approx(-np.log(3.0), abs=1e-9)
