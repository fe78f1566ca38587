"""A classical radiomics baseline beside the CNN, so the study can say what deep learning adds.

Features follow IBSI (Zwanenburg et al., Radiology 2020) on the centre slice of each crop,
inside the ROI square only (the crop's surroundings are there for box jitter, not for
reading): first-order statistics of the HU values, and grey level co-occurrence (GLCM)
texture. Entropy, uniformity and the GLCM use a fixed bin size discretisation, 25 HU bins
from -200 HU to 1300 HU (60 grey levels), so a grey level means the same tissue in every
patient. A patient's vector is the mean and the max of its crops' features, so a focal
lesion seen on a few slices still shows. The model is a standardised L2 logistic
regression whose C is chosen by an inner stratified CV on the patients it is given alone.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from skimage.feature import graycomatrix, graycoprops
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from vfrac.data.cache import Prepared, read_entry
from vfrac.errors import InputError

HU_LOW, HU_HIGH, BIN_WIDTH = -200, 1300, 25  # values outside are put in the end bins
LEVELS = (HU_HIGH - HU_LOW) // BIN_WIDTH
DISTANCES = (1, 2)
ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
CS = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths tried by the inner CV
FIRST_ORDER = ("mean", "sd", "skewness", "kurtosis", "median", "p10", "p90", "iqr", "range", "mad", "rmad", "rms",
               "entropy", "uniformity")
GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
CROP_FEATURE_NAMES = (*(f"firstorder_{name}" for name in FIRST_ORDER),
                      *(f"glcm_{name.lower()}" for name in (*GLCM_PROPERTIES, "entropy")))
FEATURE_NAMES = tuple(f"{name}_{how}" for how in ("mean", "max") for name in CROP_FEATURE_NAMES)


def square_bounds(size: int, context: float) -> tuple[int, int]:
    """[start, stop) of the ROI square on both axes of a size x size crop: the pixels whose
    centres lie in the central size / (1 + 2 context)."""
    if size < 1 or context < 0:
        raise ValueError(f"need size >= 1 and context >= 0, received {size}, {context}")
    start = math.ceil(size * context / (1 + 2 * context) - 0.5)
    return start, size - start


def grey_levels(hu: np.ndarray) -> np.ndarray:
    """Fixed bin size discretisation: HU -> 0 .. LEVELS - 1 (uint8)."""
    return np.clip((np.asarray(hu, dtype=np.float64) - HU_LOW) // BIN_WIDTH, 0, LEVELS - 1).astype(np.uint8)


def crop_features(crop: np.ndarray, context: float) -> np.ndarray:
    """CROP_FEATURE_NAMES of one crop (S, S, 3): its centre slice, inside the ROI square."""
    if crop.ndim != 3 or crop.shape[0] != crop.shape[1] or crop.shape[2] != 3:
        raise ValueError(f"a crop must be (S, S, 3), received shape {crop.shape}")
    start, stop = square_bounds(crop.shape[0], context)
    square = crop[start:stop, start:stop, 1].astype(np.float64)
    levels = grey_levels(square)
    return np.concatenate([_first_order(square.ravel(), levels.ravel()), _glcm(levels)])


def patient_features(prepared: Prepared) -> np.ndarray:
    """FEATURE_NAMES of one patient: the mean, then the max, of its crops' features."""
    if len(prepared.crops) == 0:
        raise InputError(f"patient {prepared.patient_id}: the cache entry has no crops")
    per_crop = np.stack([crop_features(crop, prepared.context) for crop in prepared.crops])
    return np.concatenate([per_crop.mean(axis=0), per_crop.max(axis=0)])


def fit_baseline(features, labels, seed: int = 0) -> Pipeline:
    """Scaler and L2 logistic regression fitted on these patients only (one outer fold's
    training patients); C by an inner stratified CV on the same patients, scored by AUC."""
    x = _checked(features)
    y = np.asarray(labels)
    if y.shape != (len(x),) or not set(np.unique(y)) <= {0, 1}:
        raise ValueError(f"need one 0/1 label per row of {len(x)} features, received {y.size} labels "
                         f"with values {np.unique(y)[:5].tolist()}")
    smallest = int(min(np.sum(y == 0), np.sum(y == 1)))
    if smallest < 2:
        raise InputError(f"the inner CV needs at least 2 patients of each class, received {int(np.sum(y == 0))} "
                         f"benign and {int(np.sum(y == 1))} malignant")
    folds = StratifiedKFold(min(5, smallest), shuffle=True, random_state=seed)
    classifier = LogisticRegressionCV(Cs=CS, l1_ratios=(0.0,), cv=folds, scoring="roc_auc", class_weight="balanced",
                                      max_iter=10_000, random_state=seed, use_legacy_attributes=False)
    return make_pipeline(StandardScaler(), classifier).fit(x, y.astype(int))


def predict_baseline(model: Pipeline, features) -> np.ndarray:
    """Probability of malignancy for each row of features."""
    return model.predict_proba(_checked(features))[:, 1]


def baseline_fold(train_entries: dict, train_labels: dict, test_entries: dict, seed: int = 0) -> dict[str, float]:
    """Fit on one outer fold's training patients (patient id -> cache entry, and -> 0/1 label)
    and predict its test patients: patient id -> probability of malignancy."""
    if overlap := sorted(set(train_entries) & set(test_entries)):
        raise ValueError(f"patients in both training and test: {overlap[:5]}")
    if unlabelled := sorted(set(train_entries) - set(train_labels)):
        raise ValueError(f"training patients without a label: {unlabelled[:5]}")
    train_ids, test_ids = sorted(train_entries), sorted(test_entries)
    train = np.stack([entry_features(str(train_entries[pid])) for pid in train_ids])
    model = fit_baseline(train, [train_labels[pid] for pid in train_ids], seed)
    test = np.stack([entry_features(str(test_entries[pid])) for pid in test_ids])
    return {pid: float(p) for pid, p in zip(test_ids, predict_baseline(model, test), strict=True)}


@functools.lru_cache(maxsize=4096)
def entry_features(path: str) -> np.ndarray:
    """`patient_features` of a cache entry, computed once per process: every patient is in
    one fold's test set and in the other folds' training sets. Entry names carry their
    content's keys, so a path always means the same crops."""
    features = patient_features(read_entry(path))
    features.setflags(write=False)
    return features


def _first_order(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    mean = values.mean()
    deviation = values - mean
    squared = deviation * deviation  # products, not **3 and **4: pow is ten times slower
    variance = squared.mean()
    p10, p25, median, p75, p90 = np.percentile(values, (10, 25, 50, 75, 90))
    middle = values[(values >= p10) & (values <= p90)]
    # IBSI: skewness and kurtosis are 0 in a uniform region rather than undefined
    skewness = np.mean(squared * deviation) / variance**1.5 if variance else 0.0
    kurtosis = np.mean(squared * squared) / variance**2 - 3 if variance else 0.0
    share = np.bincount(levels, minlength=LEVELS) / levels.size
    share = share[share > 0]
    return np.array([mean, math.sqrt(variance), skewness, kurtosis, median, p10, p90, p75 - p25,
                     values.max() - values.min(), np.mean(np.abs(deviation)), np.mean(np.abs(middle - middle.mean())),
                     math.sqrt(np.mean(values * values)), -np.sum(share * np.log2(share)), np.sum(share**2)])


def _glcm(levels: np.ndarray) -> np.ndarray:
    """GLCM_PROPERTIES and joint entropy (bits), each averaged over distances and angles."""
    matrix = graycomatrix(levels, DISTANCES, ANGLES, levels=LEVELS, symmetric=True, normed=True)
    properties = [graycoprops(matrix, name).mean() for name in GLCM_PROPERTIES]
    logs = np.log2(matrix, where=matrix > 0, out=np.zeros_like(matrix))
    return np.array([*properties, -np.sum(matrix * logs, axis=(0, 1)).mean()])


def _checked(features) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be (patients, features), received shape {x.shape}")
    if bad := np.flatnonzero(~np.isfinite(x).all(axis=0)).tolist():
        names = [FEATURE_NAMES[i] for i in bad] if x.shape[1] == len(FEATURE_NAMES) else bad
        raise InputError(f"features hold NaN or infinite values in columns {names[:5]}")
    return x
