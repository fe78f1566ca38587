"""Pooled out-of-fold results: the prediction tables, metrics with CIs, plots and the study's table."""

from __future__ import annotations

import csv
from pathlib import Path

from experiments.figures import calibration_figure, confusion_figure, fold_spread, roc_figure
from vfrac.document import ci_text, p_clause
from vfrac.stats.metrics import aggregate, binary_metrics, evaluate
from vfrac.stats.statistics import delong_test

SLICE_COLUMNS = ("patient_id", "fold", "slice", "label", "probability")
PATIENT_COLUMNS = ("patient_id", "fold", "label", "probability", "prediction")
BASELINE_COLUMNS = ("patient_id", "fold", "label", "probability")
EXCLUDED_COLUMNS = ("patient_id", "label", "reason")  # left out by --skip-bad
REPORTED = ("sensitivity", "specificity", "accuracy", "auc")
STUDY = {  # Li et al. 2021, ResNet50, 10-fold CV
    "slice": {"sensitivity": 0.90, "specificity": 0.79, "accuracy": 0.85},
    "patient": {"sensitivity": 0.95, "specificity": 0.80, "accuracy": 0.88},
}


def patient_rows(slice_rows: list[dict], threshold: float, aggregation: str) -> list[dict]:
    fold_of = {r["patient_id"]: r["fold"] for r in slice_rows}
    ids, labels, probabilities = aggregate([r["patient_id"] for r in slice_rows],
                                           [r["probability"] for r in slice_rows],
                                           [r["label"] for r in slice_rows], aggregation)
    return [{"patient_id": pid, "fold": fold_of[pid], "label": int(y), "probability": float(p),
             "prediction": int(p >= threshold)} for pid, y, p in zip(ids, labels, probabilities, strict=True)]


def pooled(slice_rows: list[dict], threshold: float, aggregation: str, n_boot: int, seed: int) -> dict:
    return evaluate([r["patient_id"] for r in slice_rows], [r["label"] for r in slice_rows],
                    [r["probability"] for r in slice_rows], threshold, aggregation, n_boot=n_boot, seed=seed)


def per_fold(slice_rows: list[dict], threshold: float, aggregation: str) -> dict[int, dict]:
    """Point estimates per fold, per slice and per patient."""
    result = {}
    for fold in sorted({r["fold"] for r in slice_rows}):
        rows = [r for r in slice_rows if r["fold"] == fold]
        patients = patient_rows(rows, threshold, aggregation)
        result[fold] = {
            "slice": binary_metrics([r["label"] for r in rows], [r["probability"] for r in rows], threshold),
            "patient": binary_metrics([p["label"] for p in patients], [p["probability"] for p in patients],
                                      threshold),
        }
    return result


def cv_metrics(result: dict) -> dict[str, float]:
    """The run tree's metric names (docs/architecture.md): slice_/patient_ sensitivity, specificity,
    accuracy, auc, with CIs."""
    metrics = {}
    for level in ("slice", "patient"):
        for name in REPORTED:
            metrics[f"{level}_{name}"] = result[level][name]
            low, high = result[level][f"{name}_ci"]
            metrics[f"{level}_{name}_ci_low"], metrics[f"{level}_{name}_ci_high"] = low, high
    return metrics


def baseline_comparison(baseline_rows: list[dict], patients: list[dict], threshold: float, n_boot: int,
                        seed: int) -> dict:
    """The radiomics baseline's per-patient metrics (CIs as the network's) and DeLong's test of
    the network's AUC against it on the same patients."""
    by_id = {r["patient_id"]: r for r in baseline_rows}
    missing = [p["patient_id"] for p in patients if p["patient_id"] not in by_id]
    if missing:
        raise ValueError(f"the baseline has no prediction for {len(missing)} patient(s), e.g. {missing[0]}")
    labels = [p["label"] for p in patients]
    scores = [by_id[p["patient_id"]]["probability"] for p in patients]
    result = evaluate([p["patient_id"] for p in patients], labels, scores, threshold, "max", n_boot=n_boot,
                      seed=seed)["patient"]
    result["delong"] = delong_test(labels, [p["probability"] for p in patients], scores)
    return result


def baseline_metrics(comparison: dict) -> dict[str, float]:
    """`baseline_` metric names for the CV run (docs/architecture.md), beside the network's."""
    metrics = {}
    for name in REPORTED:
        metrics[f"baseline_patient_{name}"] = comparison[name]
        metrics[f"baseline_patient_{name}_ci_low"], metrics[f"baseline_patient_{name}_ci_high"] = \
            comparison[f"{name}_ci"]
    delong = comparison["delong"]
    metrics |= {"baseline_auc_difference": delong["difference"], "baseline_delong_p": delong["p"]}
    return metrics


def summary_markdown(result: dict, folds: dict, aggregation: str, threshold: float,
                     baseline: dict | None = None) -> str:
    """The study's table (per slice and per patient) with our CIs, the study beside, and fold spread."""
    def cell(level, name):
        return ci_text(result[level][name], result[level][f"{name}_ci"])

    def spread(level, name):
        return fold_spread([f[level][name] for f in folds.values()])

    lines = [f"Per patient: {aggregation} of the slice probabilities, threshold {threshold}. "
             "95% CIs: Wilson (patient proportions), patient bootstrap (slices, AUC).", "",
             "| level | sensitivity | specificity | accuracy | AUC |", "| --- | --- | --- | --- | --- |"]
    for level, label in (("slice", "per slice"), ("patient", "per patient")):
        lines.append(f"| {label}, vfrac (pooled) | " + " | ".join(cell(level, n) for n in REPORTED) + " |")
        lines.append(f"| {label}, vfrac (fold mean +- SD) | " + " | ".join(spread(level, n) for n in REPORTED)
                     + " |")
        study = STUDY[level]
        lines.append(f"| {label}, Li et al. 2021 | {study['sensitivity']:.2f} | {study['specificity']:.2f} | "
                     f"{study['accuracy']:.2f} | not reported |")
    if baseline is not None:
        cells = " | ".join(ci_text(baseline[n], baseline[n + "_ci"]) for n in REPORTED)
        lines.append(f"| per patient, radiomics baseline (pooled) | {cells} |")
        delong = baseline["delong"]
        lines += ["", "Radiomics baseline: first-order HU and GLCM texture in the ROI square, L2 logistic "
                  "regression fitted per fold on that fold's training patients. Network minus baseline AUC "
                  f"{delong['difference']:+.2f} (95% CI {delong['ci'][0]:+.2f} to {delong['ci'][1]:+.2f}), "
                  f"DeLong {p_clause(delong['p'])}."]
    return "\n".join(lines) + "\n"


def plots(folder: Path, slice_rows: list[dict], patients: list[dict], threshold: float) -> None:
    """ROC curves, confusion matrices and a calibration plot, as PNG files."""
    levels = {"per slice": ([r["label"] for r in slice_rows], [r["probability"] for r in slice_rows]),
              "per patient": ([p["label"] for p in patients], [p["probability"] for p in patients])}
    roc_figure(folder / "roc.png", levels, "ROC, pooled out-of-fold")
    confusion_figure(folder / "confusion.png", levels, threshold)
    calibration_figure(folder / "calibration.png", levels)


def write_rows(path: Path, rows: list[dict], columns) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


TYPES = {"fold": int, "slice": int, "label": int, "prediction": int, "probability": float}


def read_rows(path: Path) -> list[dict]:
    """A prediction table (slices, patients or baseline) with its numbers as numbers."""
    with open(path, newline="") as handle:
        return [{k: TYPES.get(k, str)(v) for k, v in r.items()} for r in csv.DictReader(handle)]
