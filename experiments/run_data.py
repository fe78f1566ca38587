"""Reading a finished CV run back for the report: predictions, metrics, fold runs, artifacts,
the cohort as it is now (refused when it changed since the run) and its acquisition facts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from experiments.results import read_rows
from explain.runs import finished_folds
from vfrac.cohort import read_manifest
from vfrac.data.cache import CropSettings, cached_entry, current_cohort_hash, entry_spacing
from vfrac.errors import InputError
from vfrac.io.series import acquisition
from vfrac.prepare import SLICE_REPORT_NAME
from vfrac.run_tree import COHORT_HASH_TAG, EXCLUDED, READER_STUDIES, SLICE_PREDICTIONS


def read_run(client, run, scratch: Path) -> dict:
    """What the report needs of a finished CV run: its rows, metrics, folds, artifacts and cohort."""

    run_id, params = run.info.run_id, run.data.params
    names = {a.path for a in client.list_artifacts(run_id, "predictions")}
    if SLICE_PREDICTIONS not in names:
        raise InputError(f"run {run_id} has no pooled predictions yet: finish every fold first")
    slices = read_rows(Path(client.download_artifacts(run_id, SLICE_PREDICTIONS, str(scratch))))
    attention, sanity = _optional_csvs(client, run_id, "explain", ("attention_summary.csv", "sanity.csv"), scratch)
    excluded, slice_report = _optional_csvs(client, run_id, None, (EXCLUDED, SLICE_REPORT_NAME), scratch)
    manifest = Path(params["cohort"])
    outside = params.get("allow_outside") == "True"
    skip_bad = params.get("skip_bad") == "True"
    patients = read_manifest(manifest, allow_outside=outside, skip_bad=skip_bad).patients if manifest.is_file() \
        else None
    analysed = {r["patient_id"] for r in slices}
    if patients is not None:  # the run's hash covers the patients it prepared: the analysed ones
        check_same_cohort(run, manifest, [p for p in patients if p.patient_id in analysed])
    folds = {fold: {"params": r.data.params, "metrics": r.data.metrics}
             for fold, r in finished_folds(client, run).items()}
    spacing, scans = _acquisitions(params, patients, analysed)
    reader_studies = _reader_study_sections(client, run_id, scratch)
    return {"run": run, "params": params, "metrics": run.data.metrics, "slices": slices, "attention": attention,
            "patients": patients, "threshold": float(params.get("threshold", 0.5)),
            "aggregation": params.get("aggregation", "max"), "sanity": sanity, "folds": folds,
            "synthetic": (manifest.parent / "synth.json").is_file(), "spacing": spacing, "scans": scans,
            "excluded": excluded, "slice_report": slice_report, "reader_studies": reader_studies}


def _reader_study_sections(client, run_id: str, scratch: Path) -> list:
    """The report sections that `python -m explain.reader_study analyse` logged, one per study, in study order."""
    sections = []
    studies = [a.path for a in client.list_artifacts(run_id, READER_STUDIES) if a.is_dir]
    for folder in sorted(studies, key=lambda path: int(path.rsplit("-", 1)[-1])):
        if f"{folder}/section.json" in {a.path for a in client.list_artifacts(run_id, folder)}:
            path = client.download_artifacts(run_id, f"{folder}/section.json", str(scratch))
            sections += [tuple(block) for block in json.loads(Path(path).read_text(encoding="utf-8"))]
    return sections


def _acquisitions(params: dict, patients, analysed: set) -> tuple[dict, dict]:
    """patient_id -> voxel spacing (from the run's cache entries) and -> DICOM acquisition fields."""

    spacing, scans = {}, {}
    settings = CropSettings.from_values(params, defaults=CropSettings(min_area=0.0))
    for patient in patients or []:
        if patient.patient_id not in analysed:
            continue
        try:
            path = cached_entry(patient, settings, Path(params.get("cache_dir", "data/cache")))
            spacing[patient.patient_id] = entry_spacing(path)
        except InputError:  # the cache is not on this machine: spacing left out
            pass
        scans[patient.patient_id] = acquisition(patient.ct)
    return spacing, scans


def check_same_cohort(run, manifest: Path, patients) -> None:
    """Refuse a cohort whose manifest, CTs or ROIs changed since the run: its tables would mix two cohorts."""

    params, logged = run.data.params, run.data.tags.get(COHORT_HASH_TAG)
    settings = CropSettings.from_values(params, defaults=CropSettings(min_area=0.0))
    now = current_cohort_hash(manifest, patients, settings, Path(params.get("cache_dir", "data/cache")))
    if logged and now != logged:
        raise InputError(f"the cohort changed since run {run.info.run_id}: {manifest} and the files it lists "
                         f"now hash to {now}, the run used {logged}; restore the run's cohort or run "
                         "experiments.cv again on this one")


def _optional_csvs(client, run_id: str, folder: str | None, names, scratch: Path) -> list:
    """The rows of each named CSV artifact in `folder` of the run, None for one it lacks (one listing)."""
    listed = {a.path for a in client.list_artifacts(run_id, folder)}
    paths = [f"{folder}/{name}" if folder else name for name in names]
    return [read_csv(client.download_artifacts(run_id, path, str(scratch))) if path in listed else None
            for path in paths]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
