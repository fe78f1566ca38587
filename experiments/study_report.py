"""The study report of a finished CV run: the paper's tables, figures and model card, as document blocks.

Reads the run's predictions, metrics and config, and the cohort's manifest for the
visual features and the readers; writes report/report.md and report/report.html
(with its ROC and calibration plots beside it) and logs them to the CV run.
`experiments.cv` writes it at its end; `python -m experiments.report` again. Only the
manifest's patient_id appears.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from experiments.figures import calibration_figure, flow_figure, fold_spread, roc_figure
from experiments.model_card import model_card
from experiments.results import STUDY, patient_rows, per_fold
from experiments.run_data import read_run
from experiments.study_tables import (
    accuracy_tables,
    baseline_characteristics,
    fold_results,
    fold_settings,
    limitations,
    reader_agreement,
    sanity_sentence,
)
from explain.page import mlflow_ui_script
from explain.runs import cv_run
from vfrac.document import ci_text, number_text, p_clause, p_text, to_html, to_markdown
from vfrac.run_tree import COHORT_HASH_TAG, GIT_COMMIT_TAG
from vfrac.stats.metrics import aggregate, binary_metrics, calibration, wilson_interval
from vfrac.stats.statistics import holm, mcnemar, sign_table, youden_threshold

SECTIONS = ("1. Participant flow", "2. Visual reading", "3. Readers", "4. The model",
            "5. Aggregation and threshold", "6. Where the model looked", "7. Limitations", "8. CLAIM checklist")
CLASSES = ("benign", "malignant")


def write_report(run_id: str, tracking_uri: str, out: Path, log: bool = True) -> Path:
    """Build the report of a finished CV run under out/report/; returns report.md's path."""

    client = MlflowClient(tracking_uri=tracking_uri)
    run = cv_run(client, run_id)
    folder = Path(out) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        data = read_run(client, run, Path(scratch))
    blocks = build(data, folder)
    (folder / "model_card.md").write_text(model_card(data, patient_table(data), _limitations(data)),
                                          encoding="utf-8")
    (folder / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (folder / "report.html").write_text(to_html(blocks, script=mlflow_ui_script(run_id)), encoding="utf-8")
    if log:
        client.log_artifacts(run_id, str(folder), "report")
    return folder / "report.md"


# -- the report's content ---------------------------------------------------------------

def patient_table(data: dict) -> dict:
    """patient_id -> the pooled per-patient row (label, probability, prediction, fold)."""
    rows = patient_rows(data["slices"], data["threshold"], data["aggregation"])
    return {row["patient_id"]: row for row in rows}


def _limitations(data: dict) -> str:
    cohort = {p.patient_id: p for p in data["patients"]} if data["patients"] is not None else None
    return limitations(data["params"], patient_table(data), cohort, data.get("synthetic", False))


def build(data: dict, folder: Path) -> list[tuple]:
    threshold, aggregation, slices = data["threshold"], data["aggregation"], data["slices"]
    model = patient_table(data)
    run = data["run"]
    blocks = [("h1", f"vfrac study report: {run.info.run_name}"),
              ("p", f"CV run {run.info.run_id}, preset {data['params'].get('preset')}, "
                    f"{data['params'].get('folds')} folds, cohort hash {run.data.tags.get(COHORT_HASH_TAG)}, "
                    f"code {run.data.tags.get(GIT_COMMIT_TAG, 'unknown')[:12]}. Per-patient calls: "
                    f"{aggregation} of the slice probabilities, threshold {threshold} (pre-specified).")]
    cohort = {p.patient_id: p for p in data["patients"]} if data["patients"] is not None else None
    blocks += _flow(cohort, slices, model)
    blocks += _flow_figure(data, cohort, model, folder)
    blocks += baseline_characteristics(cohort, model, slices, data.get("spacing", {}), data.get("scans", {}))
    blocks += _visual(cohort, model)
    readers = _readers(cohort, model)
    blocks += readers["blocks"]
    blocks += reader_agreement(cohort, model)
    blocks += _model(data, slices, model, readers["points"], folder)
    blocks += _aggregation(slices, threshold, aggregation)
    blocks += _attention(data["attention"])
    blocks.append(("p", sanity_sentence(data.get("sanity"))))
    blocks += data.get("reader_studies", [])
    blocks += [("h2", SECTIONS[6]), ("p", _limitations(data))]
    blocks += _claim(data, slices, model)
    return blocks


def _flow(cohort, slices, model) -> list[tuple]:
    blocks = [("h2", SECTIONS[0])]
    analysed = {c: sum(m["label"] == i for m in model.values()) for i, c in enumerate(CLASSES)}
    if cohort is None:
        blocks.append(("p", "The cohort's manifest is not on this machine: manifest counts and exclusions "
                            "cannot be given."))
        listed = {c: "" for c in CLASSES}
        excluded = []
    else:
        listed = {c: sum(p.label == c for p in cohort.values()) for c in CLASSES}
        excluded = sorted(set(cohort) - set(model))
    rows = [["in the manifest", *[listed[c] for c in CLASSES], sum(v for v in listed.values() if v != "")],
            ["excluded", *[sum(cohort[p].label == c for p in excluded) if cohort else "" for c in CLASSES],
             len(excluded)],
            ["analysed", *[analysed[c] for c in CLASSES], len(model)]]
    for fold in sorted({m["fold"] for m in model.values()}):
        members = [m for m in model.values() if m["fold"] == fold]
        rows.append([f"fold {fold} test patients", *[sum(m["label"] == i for m in members) for i in range(2)],
                     len(members)])
    blocks.append(("table", ["patients", *CLASSES, "all"], rows))
    if excluded:
        blocks.append(("p", "Excluded (not in the run's predictions; see the preparation messages of the run): "
                            + ", ".join(excluded)))
    counts = np.bincount(np.unique([r["patient_id"] for r in slices], return_inverse=True)[1])
    q1, median, q3 = np.percentile(counts, [25, 50, 75])
    blocks.append(("p", f"Slices per analysed patient: median {median:.0f} (IQR {q1:.0f}-{q3:.0f}), "
                        f"range {counts.min()}-{counts.max()}; {len(slices)} slices in all."))
    return blocks


def _flow_figure(data: dict, cohort, model, folder: Path) -> list[tuple]:
    """report/flow.png: manifest -> excluded (with reasons) -> analysed -> each fold's test patients."""
    def split(ids_labels):
        labels = list(ids_labels)
        return f"{labels.count('benign')} benign, {labels.count('malignant')} malignant"

    excluded = data.get("excluded") or []
    bad_rows = [r for r in excluded if not r["patient_id"]]
    left_out = [r for r in excluded if r["patient_id"]]
    if cohort is not None:
        everyone = split(p.label for p in cohort.values())
        enrolled = f"Manifest: {len(cohort) + len(bad_rows)} rows\n{len(cohort)} patients ({everyone})"
    else:
        enrolled = f"Manifest: not on this machine\n{len(model) + len(left_out)} patients prepared or excluded"
    reasons = {}
    for row in left_out:
        reasons[row["reason"][:60]] = reasons.get(row["reason"][:60], 0) + 1
    lines = [f"Excluded: {len(left_out)} patient(s) ({split(r['label'] for r in left_out)})"]
    lines += [f"  {count} x {reason}" for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1])[:4]]
    lines += [f"and {len(bad_rows)} bad manifest row(s)"] if bad_rows else []
    dropped = None
    if data.get("slice_report"):
        dropped = sum(int(r["dropped"]) for r in data["slice_report"])
    names = {0: "benign", 1: "malignant"}
    analysed = (f"Analysed: {len(model)} patients ({split(names[m['label']] for m in model.values())})\n"
                f"{len(data['slices'])} slices"
                + (f"; {dropped} more ROI slices left out by the slice rule" if dropped is not None else ""))
    folds = [f"fold {fold} test\n{split(names[m['label']] for m in model.values() if m['fold'] == fold)}"
             .replace(" benign, ", " b / ").replace(" malignant", " m")
             for fold in sorted({m["fold"] for m in model.values()})]
    flow_figure(folder / "flow.png", enrolled, "\n".join(lines), analysed, folds)
    return [("img", "flow.png", "participant flow (STARD): manifest, exclusions with reasons, analysed, folds",
             {"data-artifact": "report/flow.png"})]


def _visual(cohort, model) -> list[tuple]:
    blocks = [("h2", SECTIONS[1])]
    names = sorted({f for p in (cohort or {}).values() for f in p.features}) if cohort else []
    if not names:
        return blocks + [("p", "The manifest has no feature_* columns.")]
    rows = []
    for name in names:
        read = [pid for pid in model if name in cohort[pid].features]
        stats = sign_table([cohort[pid].features[name] for pid in read], [model[pid]["label"] for pid in read])
        rows.append([name, f"{stats['malignant_with']}/{stats['malignant']}",
                     f"{stats['benign_with']}/{stats['benign']}",
                     ci_text(stats["sensitivity"], stats["sensitivity_ci"]),
                     ci_text(stats["specificity"], stats["specificity_ci"]),
                     ci_text(stats["odds_ratio"], stats["odds_ratio_ci"]), p_text(stats["fisher_p"])])
    blocks.append(("p", "Each feature read as a sign of malignancy, on the analysed patients with a reading. "
                        "Odds ratio with Woolf's 95% CI (0.5 added to every cell when one is empty); "
                        "two-sided Fisher's exact test."))
    blocks.append(("table", ["feature", "malignant with it", "benign with it", "sensitivity (95% CI)",
                             "specificity (95% CI)", "odds ratio (95% CI)", "Fisher p"], rows))
    return blocks


def _readers(cohort, model) -> dict:
    blocks = [("h2", SECTIONS[2])]
    names = sorted({r for p in (cohort or {}).values() for r in p.readers}) if cohort else []
    points = {}
    if not names:
        return {"blocks": blocks + [("p", "The manifest has no reader_* columns.")], "points": points}
    rows, p_values, unread = [], [], {}
    for name in names:
        read = [pid for pid in model if name in cohort[pid].readers]
        unread[name] = len(model) - len(read)
        truth = np.array([model[pid]["label"] for pid in read], dtype=bool)
        calls = np.array([cohort[pid].readers[name] == "malignant" for pid in read])
        ours = np.array([model[pid]["prediction"] for pid in read], dtype=bool)
        tp, tn = int(np.sum(calls & truth)), int(np.sum(~calls & ~truth))
        positives, negatives = int(truth.sum()), int((~truth).sum())
        test = mcnemar(calls == truth, ours == truth)
        sensitivity, specificity = _share(tp, positives), _share(tn, negatives)
        points[name] = (1 - specificity, sensitivity)
        rows.append([name, len(read), ci_text(sensitivity, wilson_interval(tp, positives)),
                     ci_text(specificity, wilson_interval(tn, negatives)),
                     ci_text(_share(tp + tn, len(read)), wilson_interval(tp + tn, len(read))),
                     f"{_share(int(np.sum(ours == truth)), len(read)):.2f}",
                     f"{test['b']} / {test['c']}", f"{p_text(test['p'])} ({test['method']})"])
        p_values.append(test["p"])
    for row, adjusted in zip(rows, holm(p_values), strict=True):
        row.append(p_text(adjusted))
    missing = ", ".join(f"{name} {count}" for name, count in unread.items() if count)
    blocks.append(("p", "Per patient, on the same analysed patients as the model; Wilson 95% CIs. McNemar's "
                        "paired test of each reader against the model's calls: b = reader right and model "
                        "wrong, c = the reverse; exact below 25 discordant pairs. Holm's adjustment over the "
                        f"{len(rows)} readers' tests. Analysed patients without a reading, left out of that "
                        f"reader's row: {missing or 'none'}."))
    blocks.append(("table", ["reader", "patients", "sensitivity", "specificity", "accuracy", "model accuracy",
                             "b / c", "McNemar p", "Holm p"], rows))
    return {"blocks": blocks, "points": points}


def _model(data, slices, model, reader_points, folder: Path) -> list[tuple]:
    metrics = data["metrics"]
    folds = per_fold(slices, data["threshold"], data["aggregation"])
    blocks = [("h2", SECTIONS[3]),
              ("p", "Pooled out-of-fold, with 95% CIs (Wilson for per-patient proportions, patient bootstrap "
                    "for per-slice metrics and AUC), as logged on the CV run; fold mean +- SD; the study's "
                    "published figures (Li et al., Eur Radiol 2021, ResNet50) for reference.")]
    rows = []
    for level in ("slice", "patient"):
        rows.append([f"per {level}, vfrac pooled"] + [
            ci_text(metrics.get(f"{level}_{name}", math.nan),
                (metrics.get(f"{level}_{name}_ci_low", math.nan), metrics.get(f"{level}_{name}_ci_high", math.nan)))
            for name in ("sensitivity", "specificity", "accuracy", "auc")])
        rows.append([f"per {level}, vfrac fold mean +- SD"] + [
            fold_spread([f[level][name] for f in folds.values()]) for name in ("sensitivity", "specificity", "accuracy",
                                                                           "auc")])
        study = STUDY[level]
        rows.append([f"per {level}, Li et al. 2021", f"{study['sensitivity']:.2f}", f"{study['specificity']:.2f}",
                     f"{study['accuracy']:.2f}", "not reported"])
    if "baseline_patient_auc" in metrics:
        rows.append(["per patient, radiomics baseline pooled"] + [
            ci_text(metrics[f"baseline_patient_{name}"], (metrics.get(f"baseline_patient_{name}_ci_low", math.nan),
                                                      metrics.get(f"baseline_patient_{name}_ci_high", math.nan)))
            for name in ("sensitivity", "specificity", "accuracy", "auc")])
    blocks.append(("table", ["", "sensitivity", "specificity", "accuracy", "AUC"], rows))
    blocks += accuracy_tables(slices, model, data["threshold"])
    blocks += fold_results(slices, data["threshold"], data["aggregation"])
    blocks += fold_settings(data.get("folds") or {}, data["params"])
    if "baseline_delong_p" in metrics:
        blocks.append(("p", "Radiomics baseline (IBSI first-order HU and GLCM texture in the ROI square, L2 logistic "
                            "regression fitted in each fold on its training patients): network minus baseline "
                            f"per-patient AUC {metrics['baseline_auc_difference']:+.2f}, DeLong "
                            f"{p_clause(metrics['baseline_delong_p'])}."))
    patient_y = [m["label"] for m in model.values()]
    patient_p = [m["probability"] for m in model.values()]
    cal = calibration(patient_y, patient_p)
    blocks.append(("p", f"Calibration per patient: Brier {cal['brier']:.3f}, slope {cal['slope']:.2f}, "
                        f"calibration-in-the-large {cal['in_the_large']:+.2f} (intercept with the slope fixed at 1; "
                        "ideal: slope 1, in-the-large 0)."))
    curves = {"model, per slice": ([r["label"] for r in slices], [r["probability"] for r in slices]),
              "model, per patient": (patient_y, patient_p)}
    roc_figure(folder / "roc.png", curves, "ROC with the readers",
               {f"reader {name}": point for name, point in reader_points.items()})
    calibration_figure(folder / "calibration.png", {"per patient": (patient_y, patient_p)})
    blocks += [("img", "roc.png", "ROC per slice and per patient, readers as points",
                {"data-artifact": "report/roc.png"}),
               ("img", "calibration.png", "calibration per patient", {"data-artifact": "report/calibration.png"})]
    return blocks


def _aggregation(slices, threshold, chosen: str) -> list[tuple]:
    """Every rule at the threshold; `chosen`, the run's pre-specified rule, is marked."""
    blocks = [("h2", SECTIONS[4])]
    rows = []
    for method, label in (("max", "max (the study's rule)"), ("mean", "mean"), ("topk", "top-3 mean")):
        label += ", pre-specified" if method == chosen else ""
        _, y, p = aggregate([r["patient_id"] for r in slices], [r["probability"] for r in slices],
                            [r["label"] for r in slices], method)
        m = binary_metrics(y, p, threshold)
        rows.append([label, ci_text(m["sensitivity"], wilson_interval(m["tp"], m["tp"] + m["fn"])),
                     ci_text(m["specificity"], wilson_interval(m["tn"], m["tn"] + m["fp"])),
                     ci_text(m["accuracy"], wilson_interval(m["tp"] + m["tn"], len(y))), f"{m['auc']:.2f}"])
    blocks.append(("table", ["per-patient aggregation", "sensitivity", "specificity", "accuracy", "AUC"], rows))
    _, y, p = aggregate([r["patient_id"] for r in slices], [r["probability"] for r in slices],
                        [r["label"] for r in slices], chosen)
    if len(set(y.tolist())) == 2:
        cut, j = youden_threshold(y, p)
        m = binary_metrics(y, p, cut)
        blocks.append(("p", f"Exploratory, not pre-specified: the Youden threshold of the pooled per-patient "
                            f"probabilities ({chosen}) is {cut:.3f} (J = {j:.2f}), giving sensitivity "
                            f"{m['sensitivity']:.2f} and specificity {m['specificity']:.2f} on the same patients "
                            f"it was chosen on; the pre-specified threshold is {threshold}."))
    return blocks


def _attention(summary) -> list[tuple]:
    blocks = [("h2", SECTIONS[5])]
    if not summary:
        return blocks + [("p", "No explanation in this run (run without --no-explain, or python -m explain.review).")]
    rows = [[r["method"], r["feature"], r["true_class"], r["call"], r["slices"],
             *(number_text(r[name]) for name in ("energy_fraction", "area_fraction", "ratio", "pointing_hit_rate"))]
            for r in summary]
    blocks.append(("p", "Share of map energy inside each feature's mask, the mask's share of the crop, their "
                        "ratio (above 1: attention concentrates on the feature) and the pointing-game hit rate, "
                        "by true class and by whether the call was right (explain/attention.csv)."))
    blocks.append(("table", ["method", "feature", "true class", "call", "slices", "energy", "area", "ratio",
                             "pointing"], rows))
    return blocks


def _claim(data, slices, model) -> list[tuple]:
    params, run = data["params"], data["run"]
    todo = "to be completed by the author"
    rows = [
        ["Data source, eligibility, dates", todo],
        ["Reference standard for benign / malignant", todo],
        ["Data partitions", f"{params.get('folds')}-fold CV, stratified by label, grouped by patient; splits.json "
                            f"in run {run.info.run_id}"],
        ["Participants and exclusions", f"{len(model)} patients analysed, {len(slices)} slices (section 1)"],
        ["Model", f"ResNet50 (keras.applications), global average pooling, dropout, one sigmoid unit; input "
                  f"{params.get('input_size')} px; weights {params.get('weights')}"],
        ["Training and tuning", f"Optuna, {params.get('trials')} trials per fold on inner validation of the fold's "
                                f"training patients; up to {params.get('epochs')} epochs; seed {params.get('seed')}"],
        ["Metrics", "sensitivity, specificity, accuracy, AUC per slice and per patient (section 4)"],
        ["Uncertainty", "Wilson CIs for proportions; patient bootstrap for slice metrics and AUC"],
        ["Comparison with readers", "McNemar's paired test (section 3)" if data["patients"] else todo],
        ["Explainability", "class-activation maps against feature masks (section 6)" if data["attention"] else todo],
        ["External validation", todo],
        ["Failure analysis, clinical use", todo],
    ]
    return [("h2", SECTIONS[7]), ("table", ["CLAIM item", "this run"], rows)]


def _share(top: int, bottom: int) -> float:
    return top / bottom if bottom else math.nan
