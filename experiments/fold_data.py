"""What the folds need from the prepared cohort, in a module of its own: the command reads it without TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FoldData:
    """What a fold needs from the cohort: cache files and labels per patient id."""

    entries: dict  # patient_id -> cache file
    labels: dict  # patient_id -> 0/1
    slice_counts: dict = field(default_factory=dict)  # patient_id -> (crops kept, slices dropped by the rule)
    excluded: list = field(default_factory=list)  # {patient_id, label, reason} left out by --skip-bad
    cohort_hash: str = ""  # vfrac.data.cache.cohort_hash of the manifest and these entries
