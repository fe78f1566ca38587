"""Patient-level folds: stratified by label, grouped by patient, saved once and reused.

Slices of one patient in both training and test would leak, so every split here is
made over patients and checked for overlap before anyone uses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from vfrac.errors import InputError


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    test: tuple[str, ...]


def outer_folds(patient_ids, labels, k: int, seed: int) -> list[Split]:
    """k folds over patients, stratified by label; every patient is tested exactly once."""
    ids, y = _checked(patient_ids, labels, k)
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = [Split(tuple(ids[train]), tuple(ids[test])) for train, test in folds.split(ids, y, groups=ids)]
    check_splits(splits)
    return splits


def inner_splits(patient_ids, labels, k: int, seed: int) -> list[Split]:
    """Tuning splits of one outer fold's training patients.

    k = 1 gives one stratified validation split of about 20% (more when a class has
    fewer than 5 patients, down to half of them with 2).
    """
    if k == 1:
        smallest = min(np.unique(np.asarray(list(labels)), return_counts=True)[1])
        return [outer_folds(patient_ids, labels, int(min(5, max(2, smallest))), seed)[0]]
    return outer_folds(patient_ids, labels, k, seed)


def check_splits(splits: list[Split]) -> None:
    """Refuse any split with a patient on both sides, or listed twice on one side."""
    for number, split in enumerate(splits):
        overlap = set(split.train) & set(split.test)
        if overlap:
            raise ValueError(f"split {number}: {len(overlap)} patient(s) in both train and test, "
                             f"e.g. {sorted(overlap)[0]}")
        for side in (split.train, split.test):
            if len(set(side)) != len(side):
                raise ValueError(f"split {number}: a patient is listed twice on one side")


def save_splits(path, splits: list[Split]) -> None:
    check_splits(splits)
    content = [{"fold": i, "train": list(s.train), "test": list(s.test)} for i, s in enumerate(splits)]
    Path(path).write_text(json.dumps(content, indent=1) + "\n")


def load_splits(path) -> list[Split]:
    try:
        content = json.loads(Path(path).read_text())
        splits = [Split(tuple(entry["train"]), tuple(entry["test"])) for entry in content]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"{path}: not a splits file ({error})") from error
    check_splits(splits)
    return splits


def _checked(patient_ids, labels, k):
    ids, y = np.asarray(list(patient_ids), dtype=object), np.asarray(list(labels))
    if len(ids) != len(y):
        raise ValueError(f"{len(ids)} patient ids but {len(y)} labels")
    if len(set(ids)) != len(ids):
        raise ValueError("patient ids must be unique")
    if k < 2:
        raise ValueError(f"k must be >= 2, received {k}")
    for value in np.unique(y):
        count = int(np.sum(y == value))
        if count < k:
            raise InputError(f"only {count} patient(s) of class {value.item()!r}, fewer than the {k} folds; "
                             "use fewer folds or more patients")
    if len(np.unique(y)) < 2:
        raise InputError("all patients have the same label; both classes are needed")
    return ids, y
