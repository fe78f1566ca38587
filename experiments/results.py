"""Pooled out-of-fold results: the prediction tables, metrics with CIs, plots and the study's table."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from vfrac.metrics import aggregate, binary_metrics, calibration, confusion, evaluate, roc_points

SLICE_COLUMNS = ("patient_id", "fold", "slice", "label", "probability")
PATIENT_COLUMNS = ("patient_id", "fold", "label", "probability", "prediction")
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
    """DESIGN.md's metric names: slice_/patient_ sensitivity, specificity, accuracy, auc, with CIs."""
    metrics = {}
    for level in ("slice", "patient"):
        for name in REPORTED:
            metrics[f"{level}_{name}"] = result[level][name]
            low, high = result[level][f"{name}_ci"]
            metrics[f"{level}_{name}_ci_low"], metrics[f"{level}_{name}_ci_high"] = low, high
    return metrics


def summary_markdown(result: dict, folds: dict, aggregation: str, threshold: float) -> str:
    """The study's table (per slice and per patient) with our CIs, the study beside, and fold spread."""
    def cell(level, name):
        value, (low, high) = result[level][name], result[level][f"{name}_ci"]
        return f"{value:.2f} ({low:.2f}-{high:.2f})"

    def spread(level, name):
        values = np.array([f[level][name] for f in folds.values()], dtype=float)
        return f"{np.nanmean(values):.2f} +- {np.nanstd(values, ddof=1) if len(values) > 1 else 0:.2f}"

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
    return "\n".join(lines) + "\n"


def plots(folder: Path, slice_rows: list[dict], patients: list[dict], threshold: float) -> None:
    """ROC curves, confusion matrices and a calibration plot, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    levels = {"slice": ([r["label"] for r in slice_rows], [r["probability"] for r in slice_rows]),
              "patient": ([p["label"] for p in patients], [p["probability"] for p in patients])}
    figure, axis = plt.subplots(figsize=(5, 5))
    for level, (y, p) in levels.items():
        points = roc_points(y, p)
        axis.plot(points["fpr"], points["tpr"], label=f"per {level} (AUC {binary_metrics(y, p)['auc']:.2f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, pooled out-of-fold")
    axis.legend(loc="lower right")
    figure.savefig(folder / "roc.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    figure, axes = plt.subplots(1, 2, figsize=(8, 4))
    for axis, (level, (y, p)) in zip(axes, levels.items(), strict=True):
        cells = confusion(y, p, threshold)
        matrix = np.array([[cells["tn"], cells["fp"]], [cells["fn"], cells["tp"]]])
        axis.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            axis.text(j, i, str(count), ha="center", va="center")
        axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["benign", "malignant"],
                 yticklabels=["benign", "malignant"], xlabel="predicted", ylabel="true", title=f"per {level}")
    figure.savefig(folder / "confusion.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(5, 5))
    for level, (y, p) in levels.items():
        result = calibration(y, p)
        bins = [b for b in result["bins"] if b["count"]]
        axis.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                  label=f"per {level} (Brier {result['brier']:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="predicted probability", ylabel="observed share malignant", title="Calibration")
    axis.legend(loc="upper left")
    figure.savefig(folder / "calibration.png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def write_rows(path: Path, rows: list[dict], columns) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{"patient_id": r["patient_id"], "fold": int(r["fold"]), "slice": int(r["slice"]),
                 "label": int(r["label"]), "probability": float(r["probability"])} for r in csv.DictReader(handle)]
