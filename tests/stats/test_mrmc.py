"""The Obuchowski-Rockette MRMC analysis against the published analysis of the Van Dyke data (OR-DBM MRMC 2.51,
MRMCaov; reference numbers in the data's README), and by hand on a made-up study."""

import csv
from pathlib import Path

import numpy as np
import pytest

from vfrac.stats.mrmc import jackknife_aucs, obuchowski_rockette, pair_scores

VAN_DYKE = Path(__file__).resolve().parents[3] / "shared" / "data" / "mrmc" / "vandyke.csv"


@pytest.fixture(scope="module")
def van_dyke():
    if not VAN_DYKE.is_file():
        pytest.skip(f"{VAN_DYKE} is not here")
    ratings, truth = np.zeros((2, 5, 114)), np.zeros(114, int)
    with open(VAN_DYKE) as handle:
        for row in csv.DictReader(handle):
            case = int(row["case"]) - 1
            ratings[int(row["modality"]) - 1, int(row["reader"]) - 1, case] = float(row["rating"])
            truth[case] = int(row["truth"])
    return obuchowski_rockette(ratings, truth)


def test_the_van_dyke_reader_aucs_and_their_anova(van_dyke):
    assert van_dyke.auc == pytest.approx(np.array([[0.91964573, 0.85877617, 0.90386473, 0.97310789, 0.82979066],
                                                   [0.94782609, 0.90531401, 0.92173913, 0.99935588, 0.92995169]]),
                                         abs=5e-9)
    assert van_dyke.mean_auc == pytest.approx([0.89703704, 0.94083736], abs=5e-9)
    assert van_dyke.difference == pytest.approx(-0.04380032, abs=5e-9)
    assert (van_dyke.ms_t, van_dyke.ms_tr) == pytest.approx((0.004796171, 0.0005510306), abs=5e-10)


def test_the_van_dyke_variance_components_match_the_jackknife_column(van_dyke):
    c = van_dyke.components
    assert (c.var_r, c.var_tr, c.cov1, c.cov2, c.cov3, c.var_error) == pytest.approx(
        (0.0015349993, 0.0002004025, 0.0003466137, 0.0003440748, 0.0002390284, 0.0008022883), abs=5e-11)


def test_the_van_dyke_random_readers_random_cases_test_and_intervals(van_dyke):
    assert van_dyke.f == pytest.approx(4.456319, abs=5e-7)
    assert van_dyke.ddf == pytest.approx(15.25967, abs=5e-6)
    assert van_dyke.p == pytest.approx(0.05166569, abs=5e-9)
    assert van_dyke.se == pytest.approx(0.02074862, abs=5e-9)
    assert van_dyke.ci == pytest.approx((-0.0879594986, 0.0003588544), abs=5e-10)
    assert van_dyke.single_se == pytest.approx([0.03317360, 0.02156637], abs=5e-9)
    assert van_dyke.single_df == pytest.approx([12.74465, 12.71019], abs=5e-6)
    assert van_dyke.single_ci == pytest.approx(np.array([[0.82522360, 0.96885048], [0.89413783, 0.98753689]]),
                                               abs=5e-9)


def test_the_van_dyke_fixed_readers_test(van_dyke):
    assert van_dyke.fixed_readers_chi2 == pytest.approx(5.475953, abs=5e-7)
    assert van_dyke.fixed_readers_p == pytest.approx(0.01927984, abs=5e-9)
    assert van_dyke.fixed_readers_ci == pytest.approx((-0.08048591, -0.00711473), abs=5e-9)


def test_aucs_and_leave_one_out_aucs_by_hand():
    """Two diseased (ratings 5, 3) and two healthy (3, 1) cases: pairs 5>3, 5>1, 3=3 (half), 3>1: AUC 3.5/4."""
    ratings, truth = np.array([5.0, 3.0, 3.0, 1.0]), np.array([1, 1, 0, 0])
    assert pair_scores(ratings, truth).mean() == 0.875
    # without the first diseased case: 3=3, 3>1 -> 0.75; without the second: 1.0; without the healthy 3: 1.0;
    # without the healthy 1: 5>3, 3=3 -> 0.75
    assert jackknife_aucs(ratings[None, None], truth)[0, 0].tolist() == [0.75, 1.0, 1.0, 0.75]


def test_a_study_without_both_classes_or_two_conditions_is_refused():
    with pytest.raises(ValueError, match="cases of both"):
        obuchowski_rockette(np.ones((2, 3, 4)), np.ones(4))
    with pytest.raises(ValueError, match="2 conditions"):
        obuchowski_rockette(np.ones((3, 3, 4)), np.array([0, 1, 0, 1]))


def test_readers_who_agree_exactly_or_score_perfectly_give_a_test_not_an_error():
    """Small and simulated studies: every reader the same (no reader spread), or every AUC 1 (no error variance)."""
    truth = np.array([0, 0, 0, 1, 1, 1])
    reader = [1, 2, 4, 3, 5, 6]  # AUC 8/9: one discordant pair
    same = obuchowski_rockette(np.array([[reader] * 3, [[1, 2, 3, 4, 5, 6]] * 3], dtype=float), truth)
    assert same.ddf > 1e9 and same.ms_tr == pytest.approx(0, abs=1e-20)  # no reader spread: the df of a chi-square
    assert same.difference == pytest.approx(8 / 9 - 1) and 0 <= same.p < 1 and np.isfinite(same.f)
    perfect = obuchowski_rockette(np.array([[[1, 2, 3, 4, 5, 6]] * 3] * 2, dtype=float), truth)
    assert (perfect.f, perfect.p, perfect.difference) == (0.0, 1.0, 0.0)
