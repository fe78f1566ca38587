"""The fold ensemble's arithmetic: spread and the uncertain flag on hand-made fold outputs, the flag's
check on out-of-fold predictions, and recalibration recovering a known miscalibration."""

import json
import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from vfrac.stats.ensemble import Recalibration, UncertaintyRule, fit_recalibration, flagged_share, member_spread


def test_agreeing_models_far_from_the_threshold_are_certain():
    spread = member_spread([0.8, 0.85, 0.9])
    assert spread == pytest.approx(0.05)
    assert UncertaintyRule().reasons(0.85, spread, 0.5) == []


def test_a_probability_near_the_threshold_and_disagreeing_models_are_each_flagged():
    # mean 0.5; deviations -0.3 -0.1 0.4 -> SD sqrt(0.26 / 2) = 0.3606
    spread = member_spread([0.2, 0.4, 0.9])
    assert spread == pytest.approx(math.sqrt(0.13))
    assert len(UncertaintyRule().reasons(0.5, spread, 0.5)) == 2
    disagreeing = member_spread([0.05, 0.65])  # SD 0.6 / sqrt(2) = 0.424
    assert UncertaintyRule().reasons(0.35, disagreeing, 0.5) == ["fold models disagree: SD 0.42 > 0.15"]
    assert UncertaintyRule().reasons(0.57, member_spread([0.56, 0.58]), 0.5) == [
        "probability 0.57 within 0.10 of the threshold 0.50"]
    assert UncertaintyRule(margin=0.05).reasons(0.57, member_spread([0.56, 0.58]), 0.5) == []
    assert UncertaintyRule().reasons(0.45, None, 0.5) == ["probability 0.45 within 0.10 of the threshold 0.50"]


@pytest.mark.parametrize(("values", "message"), [([0.7], "at least 2"), ([0.2, 1.2], "each in"),
                                                 ([[0.1, 0.2]], "at least 2")])
def test_bad_fold_outputs_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        member_spread(values)


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="margin"):
        UncertaintyRule(margin=0.5)
    with pytest.raises(ValueError, match="max_spread"):
        UncertaintyRule(max_spread=0)


def test_flagged_share_counts_errors_near_the_threshold():
    # flagged: 0.45 and 0.55; errors: 0.45 (malignant called benign), 0.55 (benign called malignant), 0.3
    result = flagged_share([1, 1, 0, 0, 1], [0.9, 0.45, 0.55, 0.1, 0.3], 0.5)
    assert result == {"patients": 5, "flagged": 2, "errors": 3, "errors_flagged": 2,
                      "accuracy_unflagged": pytest.approx(2 / 3)}


def test_platt_recovers_a_known_overconfidence():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 20000)
    truth = 1 / (1 + np.exp(-0.5 * np.log(p / (1 - p)) - 0.3))  # true log-odds = 0.3 + 0.5 logit p
    y = rng.random(p.size) < truth
    fit = fit_recalibration(y, p, "platt")
    assert fit.parameters["slope"] == pytest.approx(0.5, abs=0.03)
    assert fit.parameters["intercept"] == pytest.approx(0.3, abs=0.05)
    assert fit.apply([0.5])[0] == pytest.approx(1 / (1 + math.exp(-fit.parameters["intercept"])))


def test_isotonic_matches_sklearn_and_survives_storage_as_json():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 300)
    y = rng.random(300) < p ** 2
    fit = fit_recalibration(y, p, "isotonic")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(np.clip(p, 1e-6, 1 - 1e-6), y)
    new = rng.uniform(0, 1, 50)
    assert fit.apply(new) == pytest.approx(reference.predict(new))
    assert np.all(np.diff(fit.apply(np.linspace(0, 1, 101))) >= 0)
    stored = Recalibration.from_dict(json.loads(json.dumps(fit.as_dict())))
    assert stored.apply(new) == pytest.approx(fit.apply(new)) and stored.parameters["fitted_on"] == 300


def test_recalibration_needs_both_classes_and_a_known_method():
    with pytest.raises(ValueError, match="3 malignant and 0 benign"):
        fit_recalibration([1, 1, 1], [0.2, 0.5, 0.9], "platt")
    with pytest.raises(ValueError, match="one of"):
        fit_recalibration([0, 0, 1, 1], [0.2, 0.3, 0.5, 0.9], "beta")
    with pytest.raises(ValueError, match="not a recalibration"):
        Recalibration.from_dict({"method": "platt", "slope": 1.0})
