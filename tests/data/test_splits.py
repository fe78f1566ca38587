"""Patient-level folds: disjoint, stratified, each patient tested once, reproducible."""

import numpy as np
import pytest

from vfrac.data.splits import Split, check_splits, inner_splits, load_splits, outer_folds, save_splits
from vfrac.errors import InputError


@pytest.fixture
def cohort():
    rng = np.random.default_rng(0)
    ids = [f"P{i:03d}" for i in range(43)]
    labels = rng.permutation([1] * 29 + [0] * 14)  # the study's ratio, 296:137
    return ids, labels


def test_outer_folds_are_disjoint_stratified_and_cover_every_patient_once(cohort):
    ids, labels = cohort
    folds = outer_folds(ids, labels, k=10, seed=1)
    tested = [pid for fold in folds for pid in fold.test]
    assert sorted(tested) == sorted(ids)  # every patient tested exactly once
    label_of = dict(zip(ids, labels, strict=True))
    for fold in folds:
        assert not set(fold.train) & set(fold.test)
        assert sorted(fold.train + fold.test) == sorted(ids)
        malignant = sum(label_of[p] for p in fold.test)
        expected = len(fold.test) * labels.mean()
        assert abs(malignant - expected) <= 1.0  # class ratio within one patient


def test_same_seed_same_folds_other_seed_other_folds(cohort):
    ids, labels = cohort
    assert outer_folds(ids, labels, 5, seed=3) == outer_folds(ids, labels, 5, seed=3)
    assert outer_folds(ids, labels, 5, seed=3) != outer_folds(ids, labels, 5, seed=4)


def test_inner_splits_use_only_the_outer_training_patients(cohort):
    ids, labels = cohort
    outer = outer_folds(ids, labels, 5, seed=0)[0]
    label_of = dict(zip(ids, labels, strict=True))
    for k in (1, 3):
        inner = inner_splits(outer.train, [label_of[p] for p in outer.train], k, seed=0)
        assert len(inner) == k
        for split in inner:
            assert set(split.train) | set(split.test) == set(outer.train)
            assert not set(split.test) & set(outer.test)


def test_splits_round_trip_through_json_and_overlap_is_refused(cohort, tmp_path):
    ids, labels = cohort
    folds = outer_folds(ids, labels, 4, seed=2)
    save_splits(tmp_path / "splits.json", folds)
    assert load_splits(tmp_path / "splits.json") == folds
    leaky = [Split(("P1", "P2"), ("P2", "P3"))]
    with pytest.raises(ValueError, match="1 patient\\(s\\) in both train and test, e.g. P2"):
        check_splits(leaky)
    with pytest.raises(ValueError, match="in both train and test"):
        save_splits(tmp_path / "leaky.json", leaky)
    (tmp_path / "bad.json").write_text('[{"fold": 0, "train": ["A"], "test": ["A"]}]')
    with pytest.raises(ValueError, match="in both train and test"):
        load_splits(tmp_path / "bad.json")


def test_too_few_patients_of_a_class_for_k_folds(cohort):
    ids, labels = cohort
    with pytest.raises(InputError, match="only 14 patient\\(s\\) of class 0, fewer than the 20 folds"):
        outer_folds(ids, labels, 20, seed=0)
