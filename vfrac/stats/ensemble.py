"""The k fold models of a cross-validation as one ensemble: their spread, an `uncertain` flag, and optional
recalibration fitted on the out-of-fold predictions.

The ensemble's slice probability is its members' mean and its patient probability
aggregates those slices as the model's contract says (experiments.predict and validate),
so its slice and patient tables read as one model's. Each fold model saw a different
1 - 1/k of the cohort, so where their own patient probabilities disagree the data did
not settle the call; where the probability lies close to the threshold the call is a
coin toss. Either way a radiologist should look, and that is what `uncertain` says.

The rule (UncertaintyRule): uncertain when |probability - threshold| < margin, or when the
SD of the fold models' patient probabilities exceeds max_spread. `flagged_share` checks the
distance part on the CV run's out-of-fold predictions (each patient predicted by the one
model that did not train on it, so there is no spread to use there): how many patients
are flagged and how many of the errors fall among them.

Recalibration maps a probability to the observed rate of malignancy, fitted on the
out-of-fold patient predictions: Platt (logistic on logit p) or isotonic (monotone
steps, linear between knots). It is stored as plain numbers (`Recalibration.as_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

EPSILON = 1e-6
METHODS = ("platt", "isotonic")


@dataclass(frozen=True)
class UncertaintyRule:
    margin: float = 0.10  # a mean closer than this to the threshold is uncertain
    max_spread: float = 0.15  # an SD of the fold models' probabilities above this is uncertain

    def __post_init__(self):
        if not 0.0 <= self.margin < 0.5 or not 0.0 < self.max_spread <= 0.5:
            raise ValueError(f"margin must be in [0, 0.5) and max_spread in (0, 0.5], received {self.margin}, "
                             f"{self.max_spread}")

    def reasons(self, mean: float, spread: float | None, threshold: float) -> list[str]:
        """Why a call is uncertain (empty: it is not)."""
        found = []
        if abs(mean - threshold) < self.margin:
            found.append(f"probability {mean:.2f} within {self.margin:.2f} of the threshold {threshold:.2f}")
        if spread is not None and spread > self.max_spread:
            found.append(f"fold models disagree: SD {spread:.2f} > {self.max_spread:.2f}")
        return found


def member_spread(member_probabilities) -> float:
    """The SD (n - 1) of one patient's probabilities under each fold model."""
    values = np.asarray(member_probabilities, dtype=float)
    if values.ndim != 1 or values.size < 2 or np.any((values < 0) | (values > 1)):
        raise ValueError(f"need the probabilities of at least 2 models, each in [0, 1], received {values.tolist()}")
    return float(values.std(ddof=1))


def flagged_share(labels, probabilities, threshold: float, rule: UncertaintyRule = UncertaintyRule()) -> dict:
    """How the distance part of the rule sorts a set of predictions (see flag_counts)."""
    p = np.asarray(probabilities, dtype=float)
    return flag_counts(labels, p, threshold, np.abs(p - threshold) < rule.margin)


def flag_counts(labels, probabilities, threshold: float, flagged) -> dict:
    """Patients, flagged, errors, errors among the flagged, and the accuracy of the calls left unflagged."""
    y, p, flagged = np.asarray(labels).astype(int), np.asarray(probabilities, dtype=float), np.asarray(flagged, bool)
    wrong = (p >= threshold).astype(int) != y
    return {"patients": int(y.size), "flagged": int(flagged.sum()), "errors": int(wrong.sum()),
            "errors_flagged": int((wrong & flagged).sum()),
            "accuracy_unflagged": float(1 - wrong[~flagged].mean()) if np.any(~flagged) else float("nan")}


@dataclass(frozen=True)
class Recalibration:
    method: str
    parameters: dict

    def apply(self, probabilities) -> np.ndarray:
        p = np.clip(np.asarray(probabilities, dtype=float), EPSILON, 1 - EPSILON)
        if self.method == "platt":
            logit = np.log(p / (1 - p))
            return 1 / (1 + np.exp(-(self.parameters["intercept"] + self.parameters["slope"] * logit)))
        return np.interp(p, self.parameters["x"], self.parameters["y"])

    def as_dict(self) -> dict:
        return {"method": self.method, **self.parameters}

    @classmethod
    def from_dict(cls, values: dict) -> Recalibration:
        method = values.get("method")
        names = {"platt": ("intercept", "slope"), "isotonic": ("x", "y", "fitted_on")}.get(method)
        if names is None or any(name not in values for name in names[:2]):
            raise ValueError(f"not a recalibration: {sorted(values)}")
        return cls(method, {name: values[name] for name in names if name in values})


def fit_recalibration(labels, probabilities, method: str) -> Recalibration:
    """Platt or isotonic recalibration fitted on (out-of-fold) patient predictions."""
    # here: scikit-learn takes a second or two to import; `predict --help` and the flag's rule need none of it

    y, p = np.asarray(labels).astype(int), np.clip(np.asarray(probabilities, dtype=float), EPSILON, 1 - EPSILON)
    if method not in METHODS:
        raise ValueError(f"recalibration must be one of {METHODS}, received {method!r}")
    if y.shape != p.shape or len(np.unique(y)) != 2 or min(np.sum(y == 0), np.sum(y == 1)) < 2:
        raise ValueError(f"need one 0/1 label per probability with at least 2 of each class, received "
                         f"{int(np.sum(y == 1))} malignant and {int(np.sum(y == 0))} benign")
    if method == "platt":
        fit = LogisticRegression(C=1e6).fit(np.log(p / (1 - p)).reshape(-1, 1), y)
        return Recalibration("platt", {"intercept": float(fit.intercept_[0]), "slope": float(fit.coef_[0, 0])})
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return Recalibration("isotonic", {"x": fit.X_thresholds_.tolist(), "y": fit.y_thresholds_.tolist(),
                                      "fitted_on": int(y.size)})
