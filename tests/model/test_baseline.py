"""The radiomics baseline: features against values worked out by hand, and a model that learns texture."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vfrac.data.cache import Prepared, write_entry
from vfrac.errors import InputError
from vfrac.model.baseline import (
    CROP_FEATURE_NAMES,
    FEATURE_NAMES,
    baseline_fold,
    crop_features,
    entry_features,
    fit_baseline,
    patient_features,
    predict_baseline,
    square_bounds,
)


def prepared(pid, crops, context=0.2):
    n = len(crops)
    return Prepared(patient_id=pid, crops=np.asarray(crops, dtype=np.int16), slices=np.arange(n, dtype=np.int32),
                    boxes=np.zeros((n, 3), np.int32), spacing=np.ones(3), context=context,
                    dropped=np.zeros(0, np.int32))


def features(crop, context=0.25):
    return dict(zip(CROP_FEATURE_NAMES, crop_features(crop, context), strict=True))


def test_square_bounds_keep_the_pixels_centred_in_the_square():
    # 192 / 1.4: the square's edges lie at 27.43 and 164.57, so pixel centres 27.5 .. 164.5
    assert square_bounds(192, 0.2) == (27, 165)
    assert square_bounds(20, 0.25) == (3, 17)  # edges at 3.33 and 16.67
    assert square_bounds(6, 0.5) == (1, 5)  # edge at 1.5: pixel 1's centre lies on it, kept
    assert square_bounds(50, 0.0) == (0, 50)
    with pytest.raises(ValueError, match="-0.1"):
        square_bounds(50, -0.1)


def test_first_order_features_of_two_halves_and_nothing_outside_the_square():
    crop = np.full((20, 20, 3), -1000, np.int16)
    crop[:, :, 1] = 3000  # outside the square (rows and columns 3 .. 16): must not count
    crop[3:17, 3:10, 1] = 0
    crop[3:17, 10:17, 1] = 100
    got = features(crop)
    # 98 pixels at 0 HU and 98 at 100 HU: every deviation from the mean is 50
    expected = {"mean": 50, "sd": 50, "skewness": 0, "kurtosis": 50**4 / 50**4 - 3, "median": 50, "p10": 0,
                "p90": 100, "iqr": 100, "range": 100, "mad": 50, "rmad": 50, "rms": math.sqrt(100**2 / 2),
                # 0 HU and 100 HU fall in bins 8 and 12 of 25 HU from -200 HU, half each
                "entropy": 1.0, "uniformity": 0.5}
    assert {name: got[f"firstorder_{name}"] for name in expected} == pytest.approx(expected)
    crop[:3] = crop[17:] = -500  # change everything outside the square, and the other slices
    crop[:, :, 0] = 700
    assert features(crop) == got


def test_glcm_of_a_uniform_square_and_a_checkerboard():
    uniform = features(np.full((20, 20, 3), 300, np.int16))
    assert uniform["glcm_energy"] == uniform["glcm_asm"] == uniform["glcm_homogeneity"] == 1.0
    assert uniform["glcm_contrast"] == uniform["glcm_dissimilarity"] == uniform["glcm_entropy"] == 0.0
    assert (uniform["firstorder_sd"], uniform["firstorder_skewness"], uniform["firstorder_kurtosis"]) == (0, 0, 0)
    # -200 and -150 HU: grey levels 0 and 2. Of the 8 offsets (distances 1, 2 x 4 angles) only the
    # distance-1 horizontal and vertical ones cross colours (level difference 2); diagonal and
    # distance-2 neighbours share the colour.
    rows, columns = np.indices((20, 20))
    board = np.where((rows + columns) % 2, -150, -200).astype(np.int16)
    checker = features(np.repeat(board[:, :, None], 3, axis=2))
    assert checker["glcm_contrast"] == pytest.approx((2 * 2**2 + 6 * 0) / 8)  # 1.0
    assert checker["glcm_dissimilarity"] == pytest.approx((2 * 2 + 6 * 0) / 8)  # 0.5
    assert checker["glcm_homogeneity"] == pytest.approx((2 * 1 / (1 + 2**2) + 6 * 1) / 8)  # 0.8


def test_patient_features_are_the_mean_and_max_of_the_crops():
    crops = np.zeros((2, 20, 20, 3), np.int16)
    crops[1, :, :, 1] = 200
    vector = patient_features(prepared("p", crops, context=0.25))
    assert vector.shape == (len(FEATURE_NAMES),) == (2 * len(CROP_FEATURE_NAMES),)
    named = dict(zip(FEATURE_NAMES, vector, strict=True))
    assert (named["firstorder_mean_mean"], named["firstorder_mean_max"]) == (100, 200)
    with pytest.raises(InputError, match="no crops"):
        patient_features(prepared("empty", np.zeros((0, 20, 20, 3))))


def texture_crops(rng, malignant, count=4, size=48):
    """Same mean (400 HU); malignant ones are mottled: 4-pixel blocks of +-150 HU."""
    hu = 400 + rng.normal(0, 15, (count, size, size, 3))
    if malignant:
        blocks = rng.choice([-150, 150], (count, size // 4, size // 4, 3))
        hu += np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)
    return np.rint(hu)


def test_model_tells_textures_apart_and_learns_only_from_its_training_patients(tmp_path):
    rng = np.random.default_rng(3)
    labels = {f"p{i:02d}": i % 2 for i in range(52)}
    entries = {pid: tmp_path / f"{pid}.npz" for pid in labels}
    for pid, path in entries.items():
        write_entry(path, prepared(pid, texture_crops(rng, labels[pid])))
    train = {pid: path for pid, path in entries.items() if pid < "p32"}
    test = {pid: path for pid, path in entries.items() if pid >= "p32"}
    train_labels = {pid: labels[pid] for pid in train}
    predicted = baseline_fold(train, train_labels, test, seed=0)
    assert sorted(predicted) == sorted(test)
    assert roc_auc_score([labels[pid] for pid in predicted], list(predicted.values())) > 0.9
    # the test patients play no part in the fit: predicting fewer of them changes nothing
    fewer = baseline_fold(train, train_labels, {"p40": test["p40"], "p41": test["p41"]}, seed=0)
    assert fewer == {"p40": predicted["p40"], "p41": predicted["p41"]}
    with pytest.raises(ValueError, match="p40"):
        baseline_fold(train | {"p40": test["p40"]}, labels, test)
    with pytest.raises(ValueError, match="p00"):
        baseline_fold(train, {pid: labels[pid] for pid in train if pid != "p00"}, test)


def test_fit_uses_only_the_rows_it_is_given_and_survives_constant_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5))
    y = np.arange(30) % 2
    x[:, 0] += 3 * y
    x[:, 4] = 7.0  # zero variance
    model = fit_baseline(x, y)
    assert model[0].mean_ == pytest.approx(x.mean(axis=0))  # scaled by these rows alone
    assert model[-1].C_ in (0.01, 0.1, 1.0, 10.0)
    probabilities = predict_baseline(model, x)
    assert probabilities.shape == (30,) and roc_auc_score(y, probabilities) > 0.9


@pytest.mark.parametrize(("x", "y", "error", "message"), [
    (np.where(np.eye(6, len(FEATURE_NAMES)) == 1, np.nan, 0.0), [0, 1] * 3, InputError, FEATURE_NAMES[0]),
    (np.zeros((6, 3)), [0, 0, 0, 0, 0, 1], ValueError, "5 benign and 1 malignant"),
    (np.zeros((6, 3)), [0, 1, 2, 0, 1, 2], ValueError, "values"),
    (np.zeros((6, 3)), [0, 1] * 2, ValueError, "4 labels"),
    (np.zeros(6), [0, 1] * 3, ValueError, "shape"),
])
def test_bad_training_input_is_refused(x, y, error, message):
    with pytest.raises(error, match=message):
        fit_baseline(x, y)


def test_an_entrys_features_are_computed_once_and_read_only(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "p01.npz"
    write_entry(path, prepared("p01", texture_crops(rng, 1)))
    first = entry_features(str(path))
    np.testing.assert_array_equal(first, patient_features(prepared("p01", texture_crops(np.random.default_rng(5), 1))))
    assert entry_features(str(path)) is first and not first.flags.writeable
