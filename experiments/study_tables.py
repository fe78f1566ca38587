"""The report's tables beyond the study's own: 2 x 2 tables with predictive values, each
fold's results and settings, the readers' agreement, the sanity check, the limitations
and the model card. Each returns report blocks (or text) from the run's own data."""

from __future__ import annotations

import itertools
import math

import numpy as np

from experiments.results import per_fold
from experiments.tuning import SEARCH_SPACE
from vfrac.document import ci_text
from vfrac.stats.agreement import bootstrap_interval, category_counts, cohen_kappa, fleiss_kappa
from vfrac.stats.statistics import diagnostic_table

TODO = "to be completed by the author"


def accuracy_tables(slices, model: dict, threshold: float) -> list[tuple]:
    """TP, FP, FN, TN per slice and per patient with sensitivity, specificity, PPV and NPV (Wilson CIs)."""
    levels = {"per slice": ([r["label"] for r in slices], [r["probability"] >= threshold for r in slices]),
              "per patient": ([m["label"] for m in model.values()], [m["prediction"] for m in model.values()])}
    rows = []
    for level, (labels, calls) in levels.items():
        t = diagnostic_table(labels, calls)
        rows.append([level, t["tp"], t["fp"], t["fn"], t["tn"]]
                    + [ci_text(t[name], t[f"{name}_ci"]) for name in ("sensitivity", "specificity", "ppv", "npv")])
    prevalence = np.mean(levels["per patient"][0]) if model else math.nan
    return [("p", f"2 x 2 tables at the threshold {threshold} (malignant = positive), pooled out-of-fold; "
                  f"PPV and NPV hold at this cohort's prevalence of malignancy ({prevalence:.2f} of patients), "
                  "not at a clinic's. Wilson 95% CIs."),
            ("table", ["level", "TP", "FP", "FN", "TN", "sensitivity", "specificity", "PPV", "NPV"], rows)]


def fold_results(slices, threshold: float, aggregation: str) -> list[tuple]:
    """Each outer fold's own test results."""
    rows = []
    for fold, result in per_fold(slices, threshold, aggregation).items():
        patient, level = result["patient"], result["slice"]
        members = [r for r in slices if r["fold"] == fold]
        rows.append([fold, len({r["patient_id"] for r in members}), len(members),
                     *[f"{patient[name]:.2f}" for name in ("sensitivity", "specificity", "accuracy", "auc")],
                     f"{level['auc']:.2f}"])
    return [("p", "Each fold's test patients alone (point estimates; the pooled table above has the CIs)."),
            ("table", ["fold", "patients", "slices", "sensitivity", "specificity", "accuracy", "patient AUC",
                       "slice AUC"], rows)]


def fold_settings(folds: dict, params: dict) -> list[tuple]:
    """The settings each fold's final model trained with, and how they were chosen."""
    trials = int(params.get("trials", 0) or 0)
    rows = []
    for fold, run in sorted(folds.items()):
        p, m = run["params"], run["metrics"]
        rows.append([fold, *[p.get(f"best_{name}", "") for name in ("learning_rate", "weight_decay", "dropout",
                                                                     "batch_size", "augment_strength")],
                     f"{p.get('best_window_level', '')} / {p.get('best_window_width', '')}", p.get("final_epochs", ""),
                     f"{trials} ({int(m.get('trials_pruned', 0))} pruned)" if trials else "none",
                     f"{m['best_inner_val_patient_auc']:.2f}" if "best_inner_val_patient_auc" in m else "",
                     f"{m['final_training_seconds']:.0f}" if "final_training_seconds" in m else "not logged"])
    if trials:
        how = (f"Optuna TPE, {trials} trials per fold (the first at the defaults), each scored by the per-patient "
               f"AUC on {params.get('inner_folds', '1')} inner validation split(s) of the fold's training "
               f"patients, pruner {params.get('pruner', 'median')}; the best trial's settings and epoch retrained "
               "on all the fold's training patients. Search space: "
               + "; ".join(f"{name} {space}" for name, space in SEARCH_SPACE.items()) + ".")
    else:
        how = ("No tuning (--trials 0): every fold trained with the default settings for the preset's "
               f"{params.get('epochs')} epochs.")
    if not rows:
        return [("p", how + " The fold runs' settings were not found in the store.")]
    return [("p", how),
            ("table", ["fold", "learning rate", "weight decay", "dropout", "batch", "augmentation",
                       "window (level / width)", "epochs", "trials", "best inner AUC", "training s"], rows)]


def reader_agreement(cohort: dict | None, model: dict, n_boot: int = 2000) -> list[tuple]:
    """Cohen's kappa of each pair of readers and Fleiss' kappa of all, on the patients every reader read."""
    names = sorted({r for p in (cohort or {}).values() for r in p.readers}) if cohort else []
    if len(names) < 2:
        return [("p", "Fewer than two readers in the manifest: no agreement to report.")]
    shared = [pid for pid in model if all(name in cohort[pid].readers for name in names)]
    if len(shared) < 2:
        return [("p", "Fewer than two analysed patients were read by every reader: no agreement to report.")]
    calls = np.array([[cohort[pid].readers[name] for name in names] for pid in shared])
    rows = []
    for i, j in itertools.combinations(range(len(names)), 2):
        value = cohen_kappa(calls[:, i], calls[:, j])
        interval = bootstrap_interval(lambda c, i=i, j=j: cohen_kappa(c[:, i], c[:, j]), calls, n_boot)
        rows.append([f"{names[i]} - {names[j]}", "Cohen", ci_text(value, interval)])
    overall = fleiss_kappa(category_counts(calls))
    interval = bootstrap_interval(lambda c: fleiss_kappa(category_counts(c, np.unique(calls))), calls, n_boot)
    rows.append([", ".join(names), "Fleiss", ci_text(overall, interval)])
    return [("p", f"Agreement between the readers beyond chance, on the {len(shared)} analysed patients every "
                  f"reader read ({len(model) - len(shared)} others left out); 95% CIs from {n_boot} bootstrap "
                  "resamples of those patients."),
            ("table", ["readers", "kappa", "value (95% CI)"], rows)]


def sanity_sentence(rows: list[dict] | None) -> str:
    """What the randomisation test means for trusting the maps, in one sentence."""
    full = [r for r in rows or [] if r.get("randomized_to") == "conv1"]
    if not full:
        return "No randomisation sanity check in this run's explanation."
    parts = [f"{r['method']} rho {float(r['spearman_mean']):.2f}" for r in full]
    flagged = [r["method"] for r in full if str(r.get("flagged")) in ("1", "True")]
    verdict = (f"{', '.join(flagged)} still agree with the fully randomised network's maps: they show the image, "
               "not what the model learnt, and should not be read as the model's reasons"
               if flagged else "the maps change when the learnt weights are destroyed, so they depend on what the "
               "model learnt (necessary, not sufficient, for trusting them)")
    return (f"Randomisation sanity check (Adebayo et al., explain/sanity.csv): mean rank correlation of the trained "
            f"model's maps with a fully randomised network's, {'; '.join(parts)}: {verdict}.")


def limitations(params: dict, model: dict, cohort: dict | None, synthetic_readers: bool) -> str:
    """The limitations that follow from the run's own facts."""
    n = len(model)
    malignant = sum(m["label"] for m in model.values())
    facts = [f"{n} patients ({malignant} malignant, {n - malignant} benign): the CIs above are wide at this size",
             "one cohort, no external validation: the figures estimate performance on patients like these, "
             "scanned like these",
             f"{params.get('folds')}-fold cross-validation reuses the same patients for tuning and testing "
             "only within nested splits; the pre-specified rule and threshold were not tuned on test patients"]
    centres = {p.centre for p in (cohort or {}).values()} - {""}  # the optional manifest column
    facts.append(f"{len(centres)} centres in the manifest" if len(centres) > 1 else
                 "single centre (the manifest names no other)")
    if synthetic_readers:
        facts.append("the readers' calls came with a synthetic cohort (vfrac.synth): the reader comparison "
                     "illustrates the method, it is not evidence")
    if params.get("weights") in (None, "", "None"):
        facts.append("trained from random initial weights, unlike the study's ImageNet start")
    return "Limitations, from this run's facts: " + "; ".join(facts) + "."


def baseline_characteristics(cohort: dict | None, model: dict, slices, spacing: dict, scans: dict) -> list[tuple]:
    """Analysed patients by class: level, slices, voxel spacing, scanner and kVp, visual features.

    `spacing`: patient_id -> (dz, dy, dx) mm of the prepared CT; `scans`: patient_id -> the
    DICOM acquisition fields (vfrac.io.series.acquisition; empty for NIfTI). Never identifiers.
    """
    groups = {name: [pid for pid, m in model.items() if m["label"] == label] for label, name in
              ((0, "benign"), (1, "malignant"))}
    groups["all"] = list(model)
    counts = {}
    for r in slices:
        counts[r["patient_id"]] = counts.get(r["patient_id"], 0) + 1

    def summary(values):
        values = [float(v) for v in values if v not in ("", None)]
        if not values:
            return "n/a"
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return f"{median:.3g} ({q1:.3g}-{q3:.3g}), n = {len(values)}"

    def tally(values):
        found = {}
        for value in values:
            if value:
                found[value] = found.get(value, 0) + 1
        return ", ".join(f"{k} {v}" for k, v in sorted(found.items(), key=lambda kv: -kv[1])[:4]) or "n/a"

    rows = [["patients", *[len(ids) for ids in groups.values()]],
            ["vertebral level", *[tally(cohort[p].vertebra for p in ids) if cohort else "n/a"
                                  for ids in groups.values()]],
            ["slices analysed per patient, median (IQR)", *[summary(counts.get(p) for p in ids)
                                                            for ids in groups.values()]],
            ["slice spacing, mm", *[summary(spacing[p][0] for p in ids if p in spacing) for ids in groups.values()]],
            ["pixel spacing, mm", *[summary(spacing[p][2] for p in ids if p in spacing) for ids in groups.values()]],
            ["slice thickness, mm", *[summary(scans.get(p, {}).get("slice_thickness") for p in ids)
                                      for ids in groups.values()]],
            ["manufacturer", *[tally(scans.get(p, {}).get("manufacturer") for p in ids) for ids in groups.values()]],
            ["scanner model", *[tally(scans.get(p, {}).get("model") for p in ids) for ids in groups.values()]],
            ["kVp", *[summary(scans.get(p, {}).get("kvp") for p in ids) for ids in groups.values()]]]
    features = sorted({f for p in (cohort or {}).values() for f in p.features}) if cohort else []
    for feature in features:
        cells = []
        for ids in groups.values():
            read = [p for p in ids if feature in cohort[p].features]
            cells.append(f"{sum(cohort[p].features[feature] for p in read)}/{len(read)}")
        rows.append([f"{feature} present", *cells])
    return [("p", "Analysed patients by class (median (IQR) and counts; scanner fields from the first CT file's "
                  "header of DICOM series, none for NIfTI)."),
            ("table", ["", *groups], rows)]
