"""The run's figures and fold spread, drawn one way for the CV summary and the study report."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from vfrac.stats.metrics import binary_metrics, calibration, confusion, roc_points

DPI = 100


def fold_spread(values) -> str:
    """Fold mean +- SD (n - 1), NaN folds left out; "n/a" when no fold has a value."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if not values.size:
        return "n/a"
    return f"{values.mean():.2f} +- {values.std(ddof=1) if values.size > 1 else 0.0:.2f}"


def _pyplot():

    matplotlib.use("Agg")

    return plt


def roc_figure(path: Path, curves: dict, title: str, points: dict | None = None) -> None:
    """ROC curves, name -> (labels, probabilities), each with its AUC; `points` name -> (1 - spec, sens).

    A curve whose labels hold one class has no ROC and is left out.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    for name, (y, p) in curves.items():
        if len(set(y)) == 2:
            roc = roc_points(y, p)
            axis.plot(roc["fpr"], roc["tpr"], label=f"{name} (AUC {binary_metrics(y, p)['auc']:.2f})")
    for name, (x, y) in (points or {}).items():
        axis.plot([x], [y], marker="o", linestyle="", label=name)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    axis.legend(loc="lower right", fontsize=8)
    _save(plt, figure, path)


def calibration_figure(path: Path, curves: dict) -> None:
    """Observed share malignant against predicted probability per bin, name -> (labels, probabilities)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    for name, (y, p) in curves.items():
        result = calibration(y, p)
        bins = [b for b in result["bins"] if b["count"]]
        axis.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                  label=f"{name} (Brier {result['brier']:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="predicted probability", ylabel="observed share malignant", title="Calibration")
    axis.legend(loc="upper left")
    _save(plt, figure, path)


def confusion_figure(path: Path, levels: dict, threshold: float) -> None:
    """One 2 x 2 table per level, name -> (labels, probabilities), at the threshold."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 4), squeeze=False)
    for axis, (name, (y, p)) in zip(axes[0], levels.items(), strict=True):
        cells = confusion(y, p, threshold)
        matrix = np.array([[cells["tn"], cells["fp"]], [cells["fn"], cells["tp"]]])
        axis.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            axis.text(j, i, str(count), ha="center", va="center")
        axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["benign", "malignant"],
                 yticklabels=["benign", "malignant"], xlabel="predicted", ylabel="true", title=name)
    _save(plt, figure, path)


def _save(plt, figure, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)


def flow_figure(path: Path, enrolled: str, excluded: str, analysed: str, folds: list[str]) -> None:
    """A STARD-style participant flow: enrolled -> (excluded, to the side) -> analysed -> each fold's test set."""
    plt = _pyplot()
    width = max(9.0, 2.2 * len(folds))
    figure, axis = plt.subplots(figsize=(width, 6.5))
    axis.set(xlim=(0, width), ylim=(0, 6.5))
    axis.axis("off")
    box = dict(boxstyle="round,pad=0.5", facecolor="#f4f6fb", edgecolor="#445")
    centre, side = width * 0.3, width * 0.3 + 1.6
    axis.text(centre, 5.8, enrolled, ha="center", va="center", fontsize=10, bbox=box)
    axis.text(side, 4.3, excluded, ha="left", va="center", fontsize=9, bbox=box | {"facecolor": "#fbf1f0"})
    axis.text(centre, 2.9, analysed, ha="center", va="center", fontsize=10, bbox=box)
    arrow = dict(arrowstyle="->", color="#445")
    axis.annotate("", xy=(centre, 3.4), xytext=(centre, 5.3), arrowprops=arrow)
    axis.annotate("", xy=(side - 0.15, 4.3), xytext=(centre, 4.3), arrowprops=arrow)
    for k, text in enumerate(folds):
        x = (k + 0.5) * width / len(folds)
        axis.text(x, 0.7, text, ha="center", va="center", fontsize=9, bbox=box)
        axis.annotate("", xy=(x, 1.2), xytext=(centre, 2.4), arrowprops=arrow)
    _save(plt, figure, path)
