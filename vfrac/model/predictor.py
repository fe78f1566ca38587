"""One model, or the fold models of a cross-validation as an ensemble, applied to crops.

Every place vfrac predicts goes through `Predictor`: the CV's test patients, the
review, a new patient's CT and an external cohort. Each member turns crops into inputs
with its own evaluation pipeline (`vfrac.data.pipeline`); a slice's probability is the
members' mean, a patient's is the contract's rule (`aggregation`) over its slices, and
the members' spread is the SD of their own patient probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vfrac.data.pipeline import evaluation_images, make_dataset
from vfrac.stats.ensemble import member_spread
from vfrac.stats.metrics import aggregate

EVALUATION_BATCH = 64


@dataclass(frozen=True)
class Member:
    """A Keras model and the evaluation settings it was trained with."""

    model: object
    input_size: int
    window: tuple[float, float]


@dataclass(frozen=True)
class Prediction:
    """Slice and patient probabilities; `members` holds each member's patient probability per patient."""

    index: list[tuple[str, int]]  # (patient_id, slice) of each crop
    slices: np.ndarray  # each crop's probability: the members' mean
    patients: dict[str, float]  # patient_id -> probability under the aggregation rule
    members: dict[str, list[float]]  # patient_id -> each member's own patient probability

    def spread(self, patient_id: str) -> float | None:
        """The SD of the members' probabilities of this patient; None for a single model."""
        values = self.members[patient_id]
        return member_spread(values) if len(values) > 1 else None


class Predictor:
    """Model(s) + the contract's rule: crops in, slice and patient probabilities out."""

    def __init__(self, members: list[Member], aggregation: str = "max", threshold: float = 0.5):
        if not members:
            raise ValueError("a predictor needs at least one model")
        self.members, self.aggregation, self.threshold = list(members), aggregation, float(threshold)

    @classmethod
    def single(cls, model, input_size: int, window, aggregation: str = "max", threshold: float = 0.5) -> Predictor:
        return cls([Member(model, int(input_size), tuple(window))], aggregation, threshold)

    def inputs(self, crops: np.ndarray, context: float, member: int = 0, window=None) -> np.ndarray:
        """Cached crops (n, C, C, 3) as `member`'s network inputs (in `window`, default the member's own)."""
        chosen = self.members[member]
        return evaluation_images(crops, context, chosen.input_size, tuple(window or chosen.window))

    def predict_crops(self, patient_id: str, crops: np.ndarray, context: float, slices) -> Prediction:
        """One patient's crops, held in memory (a new CT)."""
        outputs = [member.model.predict(self.inputs(crops, context, k), verbose=0)[:, 0].astype(float)
                   for k, member in enumerate(self.members)]
        return self._combine([(patient_id, int(z)) for z in slices], outputs)

    def predict_entries(self, entries: dict, labels: dict | None = None) -> Prediction:
        """Patients' cached crop files (patient_id -> cache entry), through the evaluation dataset."""
        labels = labels if labels is not None else dict.fromkeys(entries, 0)
        outputs, index = [], []
        for member in self.members:
            dataset, index = make_dataset(entries, labels, member.input_size, member.window,
                                          batch_size=EVALUATION_BATCH)
            outputs.append(member.model.predict(dataset, verbose=0)[:, 0].astype(float))
        return self._combine(index, outputs)

    def call(self, probability: float) -> str:
        return "malignant" if probability >= self.threshold else "benign"

    def _combine(self, index: list[tuple[str, int]], outputs: list[np.ndarray]) -> Prediction:
        ids = [pid for pid, _ in index]
        members: dict[str, list[float]] = {}
        for probabilities in outputs:
            pids, _, patient_probabilities = aggregate(ids, probabilities, [0] * len(ids), self.aggregation)
            for pid, probability in zip(pids, patient_probabilities, strict=True):
                members.setdefault(pid, []).append(float(probability))
        slices = np.mean(outputs, axis=0) if len(outputs) > 1 else outputs[0]
        pids, _, patient_probabilities = aggregate(ids, slices, [0] * len(ids), self.aggregation)
        patients = {pid: float(p) for pid, p in zip(pids, patient_probabilities, strict=True)}
        return Prediction(index, slices, patients, members)
