"""One predictor for every place vfrac predicts: slices, the patient's rule, an ensemble's mean and spread."""

import keras
import numpy as np
import pytest

from bench.bench_pipeline import fake_cache
from vfrac.data.cache import read_entry
from vfrac.data.window import BONE_WINDOW
from vfrac.model.network import build_classifier
from vfrac.model.predictor import Member, Predictor


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(5)
    return [build_classifier(32, arch="resnet-tiny") for _ in range(2)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return fake_cache(tmp_path_factory.mktemp("cache"), 3, 4)


def test_a_single_model_gives_each_slice_and_the_patients_maximum(models, cache):
    entries, labels = cache
    prediction = Predictor.single(models[0], 32, BONE_WINDOW).predict_entries(entries, labels)
    assert [pid for pid, _ in prediction.index] == [pid for pid in entries for _ in range(4)]
    assert prediction.slices.shape == (12,) and np.all((prediction.slices > 0) & (prediction.slices < 1))
    for k, pid in enumerate(entries):
        assert prediction.patients[pid] == pytest.approx(prediction.slices[4 * k:4 * k + 4].max(), abs=0)
        assert prediction.members[pid] == [prediction.patients[pid]] and prediction.spread(pid) is None
    mean = Predictor.single(models[0], 32, BONE_WINDOW, aggregation="mean").predict_entries(entries, labels)
    assert mean.patients["B0001"] == pytest.approx(float(np.mean(mean.slices[4:8])))


def test_crops_in_memory_get_the_probabilities_of_their_cache_file(models, cache):
    entries, labels = cache
    predictor = Predictor.single(models[0], 32, BONE_WINDOW, threshold=0.5)
    from_files = predictor.predict_entries(entries, labels)
    prepared = read_entry(entries["B0002"])
    in_memory = predictor.predict_crops("B0002", prepared.crops, prepared.context, prepared.slices)
    np.testing.assert_allclose(in_memory.slices, from_files.slices[8:12], atol=1e-6)
    assert in_memory.index == [("B0002", z) for z in range(4)]
    assert predictor.call(in_memory.patients["B0002"]) == ("malignant" if in_memory.patients["B0002"] >= 0.5
                                                           else "benign")


def test_an_ensemble_averages_its_members_slices_and_spreads_their_patient_probabilities(models, cache):
    entries, labels = cache
    singles = [Predictor.single(model, 32, BONE_WINDOW).predict_entries(entries, labels) for model in models]
    both = Predictor([Member(model, 32, BONE_WINDOW) for model in models]).predict_entries(entries, labels)
    np.testing.assert_allclose(both.slices, (singles[0].slices + singles[1].slices) / 2, rtol=1e-12)
    for pid in entries:
        members = [single.patients[pid] for single in singles]
        assert both.members[pid] == members
        assert both.spread(pid) == pytest.approx(abs(members[0] - members[1]) / np.sqrt(2))
        assert both.patients[pid] == pytest.approx(max(both.slices[[i for i, (p, _) in enumerate(both.index)
                                                                      if p == pid]]))


def test_a_predictor_needs_a_model():
    with pytest.raises(ValueError, match="at least one model"):
        Predictor([])
