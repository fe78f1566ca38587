"""A registered vfrac model tested on another site's cohort (`python -m experiments.validate`).

Cross-validation estimates the method on the cohort it was developed on; reviewers
(TRIPOD+AI, CLAIM) ask next how the model holds on patients from elsewhere. This applies
one model, exactly as its contract says (crop settings and slice rule, HU window, input
size, aggregation, threshold: nothing is re-tuned on the new cohort), to every patient
of another cohort's manifest, and logs an MLflow run tagged `vfrac.role=validation`:
the model it tested (tags, and a tag on the registry version that points back), the
cohort as its dataset input, the same metric names as a CV run (so the two sit side by
side in the UI's runs table), the prediction tables, the plots and report/report.md:
the 2 x 2 table, sensitivity, specificity, accuracy and AUC with 95% CIs, calibration
slope and calibration-in-the-large, and the CV estimate beside the external one with
the AUC difference and its CI (DeLong, unpaired). A rerun on the same model and cohort
reuses the finished run. Only the manifest's patient_id is written.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from experiments.figures import calibration_figure, confusion_figure, roc_figure
from experiments.model_package import log_cohort
from experiments.models import (
    cv_patients,
    load_members,
    predictor_of,
)
from experiments.results import cv_metrics, write_rows
from experiments.runner import code_version, git_commit
from experiments.tracking import Tracker
from explain.page import mlflow_ui_script
from explain.runs import default_tracking_uri
from vfrac.cohort import read_manifest
from vfrac.data.cache import CropSettings, cohort_hash, prepare_cohort
from vfrac.document import ci_text, number_text, p_clause, to_html, to_markdown
from vfrac.errors import InputError
from vfrac.run_tree import (
    CODE_VERSION_TAG,
    COHORT_HASH_TAG,
    CV_RUN_ID_TAG,
    DONE_TAG,
    EXCLUDED,
    GIT_COMMIT_TAG,
    MODEL_RUN_ID_TAG,
    MODEL_TAG,
    ROLE_TAG,
    TRAINED_COHORT_HASH_TAG,
    VALIDATION_KEY_TAG,
    VALIDATION_ROLE,
    VALIDATION_VERSION_TAG,
)
from vfrac.stats.ensemble import UncertaintyRule, flag_counts, member_spread
from vfrac.stats.metrics import aggregate, calibration, confusion, evaluate
from vfrac.stats.statistics import unpaired_auc_difference

N_BOOT = 1000
SLICE_COLUMNS = ("patient_id", "slice", "label", "probability")
PATIENT_COLUMNS = ("patient_id", "label", "probability", "prediction", "spread_sd", "uncertain")
EXCLUDED_COLUMNS = ("patient_id", "label", "reason")
LEVELS = (("slice", "per slice"), ("patient", "per patient"))
REPORTED = ("sensitivity", "specificity", "accuracy", "auc")
SHOWN = {"sensitivity": "sensitivity", "specificity": "specificity", "accuracy": "accuracy", "auc": "AUC"}


def validate(args) -> dict:
    """Everything the command does; returns {"run_id", "table" (the console's), "browse" (lines)}."""


    tracking_uri = args.tracking_uri or default_tracking_uri()
    manifest = args.cohort.resolve()
    if not manifest.is_file():
        raise InputError(f"{args.cohort}: cohort manifest not found")
    cohort = read_manifest(manifest, skip_bad=args.skip_bad, allow_outside=args.allow_outside)  # before the model
    with tempfile.TemporaryDirectory() as scratch:
        members, model_info = load_members(args, tracking_uri, Path(scratch))
    contract, label, model_uri = members[0][1], model_info["label"], model_info["uri"]
    settings = CropSettings.from_values(contract["crop"])
    with tqdm(total=len(cohort.patients), unit="patient", desc="prepare") as bar:
        prepared = prepare_cohort(cohort.patients, settings, args.cache_dir, workers=args.workers,
                                  skip_bad=args.skip_bad, on_progress=lambda *_: bar.update())
    label_of = {p.patient_id: p.label for p in cohort.patients}
    excluded = ([{"patient_id": "", "label": "", "reason": problem} for problem in cohort.problems]
                + [{"patient_id": pid, "label": label_of[pid], "reason": reason}
                   for pid, reason in sorted(prepared.failures.items())])
    for row in excluded:
        print(f"--skip-bad: left out {row['patient_id'] or '(row)'}: {row['reason']}")
    labels = {p.patient_id: int(p.is_malignant) for p in cohort.patients if p.patient_id in prepared.entries}
    malignant = sum(labels.values())
    if min(malignant, len(labels) - malignant) < 2:
        raise InputError(f"{manifest}: {malignant} malignant and {len(labels) - malignant} benign patient(s) left; "
                         "an AUC and its CI need at least 2 of each")
    digest = cohort_hash(manifest, prepared.entries)
    tracker = Tracker(tracking_uri, args.experiment or _model_experiment(tracking_uri, contract))
    key = _validation_key(model_info, args.rule)
    query = (f"tags.`{ROLE_TAG}` = '{VALIDATION_ROLE}' and tags.`{COHORT_HASH_TAG}` = '{digest}' and "
             f"tags.`{DONE_TAG}` = '1'")
    done = [r for r in tracker.client.search_runs([tracker.experiment_id], query)
            if r.data.tags.get(VALIDATION_KEY_TAG) == key]
    if done:
        run_id = done[0].info.run_id
        print(f"validation of {label} on this cohort already done (run {run_id}); reused")
        if args.out:
            _copy_artifacts(tracker, run_id, Path(args.out))
        return {"run_id": run_id, "table": tracker.read_text(run_id, "report/summary.md"),
                "browse": tracker.browse_lines(run_id)}
    tags = _tags(model_uri, model_info, digest) | {VALIDATION_KEY_TAG: key}
    run_id = tracker.client.create_run(tracker.experiment_id, run_name=f"validation {label} on {manifest.parent.name}",
                                       tags=tags).info.run_id
    try:
        started = time.perf_counter()
        print(f"validation run {run_id}: {label} on {len(labels)} patients of {manifest}", flush=True)
        slices, members_of = predict_cohort(predictor_of(members), prepared.entries, labels)
        seconds = time.perf_counter() - started
        result = assess(slices, members_of, contract, args.rule, _cv_predictions(tracker, model_info))
        with tempfile.TemporaryDirectory() as scratch:  # only what this run wrote is logged, never --out's files
            write_outputs(Path(scratch), result, excluded, context={
                "model": model_uri, "label": label, "contract": contract, "model_info": model_info,
                "manifest": manifest, "cohort_hash": digest, "excluded": len(excluded), "run_id": run_id,
                "windows": [c["window"] for _, c in members]})
            tracker.artifacts(run_id, Path(scratch))
            if args.out:
                shutil.copytree(scratch, args.out, dirs_exist_ok=True)
        _log(tracker, run_id, args, model_uri, contract | {"window": [c["window"] for _, c in members]}, result,
             digest, manifest, seconds, len(excluded))
        tracker.finish(run_id)
    except BaseException as error:
        tracker.fail(run_id, error)
        raise
    return {"run_id": run_id, "table": result["summary"], "browse": tracker.browse_lines(run_id)}


def _validation_key(model_info: dict, rule: UncertaintyRule) -> str:
    """What makes two validations on one cohort the same: the very model (its run, or the ensemble's fold runs;
    an alias that moved names another run) and the flag's rule."""

    found = {"run_id": model_info.get("run_id"), "members": model_info.get("members"), "rule": asdict(rule)}
    return hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()[:16]


def _copy_artifacts(tracker, run_id: str, out: Path) -> None:
    """A finished validation run's files into --out, as a new run would have written them."""
    for artifact in tracker.client.list_artifacts(run_id):
        tracker.download(run_id, artifact.path, out)


def predict_cohort(predictor, entries: dict, labels: dict) -> tuple[list[dict], dict]:
    """Every kept crop's probability (an ensemble's: its members' mean) as rows; and patient_id -> each
    member's patient probability, for the spread."""
    prediction = predictor.predict_entries(entries, labels)
    slices = [{"patient_id": pid, "slice": int(z), "label": labels[pid], "probability": float(p)}
              for (pid, z), p in zip(prediction.index, prediction.slices, strict=True)]
    return slices, prediction.members


def assess(slices: list[dict], members_of: dict, contract: dict, rule: UncertaintyRule, cv: dict | None) -> dict:
    """The external metrics with CIs and calibration, the patients' table with the uncertain flag, and the CV
    estimate beside them."""

    threshold, aggregation = float(contract["threshold"]), contract["aggregation"]
    ids, probabilities, labels = ([r[k] for r in slices] for k in ("patient_id", "probability", "label"))
    metrics = evaluate(ids, labels, probabilities, threshold, aggregation, n_boot=N_BOOT, seed=0)
    pids, patient_labels, patient_probabilities = aggregate(ids, probabilities, labels, aggregation)
    patients = []
    for pid, y, p in zip(pids, patient_labels, patient_probabilities, strict=True):
        spread = member_spread(members_of[pid]) if len(members_of[pid]) > 1 else None
        patients.append({"patient_id": pid, "label": int(y), "probability": float(p), "prediction": int(p >= threshold),
                         "spread_sd": "" if spread is None else spread,
                         "uncertain": int(bool(rule.reasons(float(p), spread, threshold)))})
    calibrations = {"slice": calibration(labels, probabilities),
                    "patient": calibration(patient_labels, patient_probabilities)}
    difference = None
    if cv is not None and cv.get("labels"):
        difference = unpaired_auc_difference(patient_labels, patient_probabilities, cv["labels"],
                                             cv["probabilities"])
    flagged = flag_counts(patient_labels, patient_probabilities, threshold, [p["uncertain"] for p in patients])
    flagged |= {"rule": rule, "ensemble": len(next(iter(members_of.values()))) > 1}
    result = {"slices": slices, "patients": patients, "metrics": metrics, "calibration": calibrations,
              "cv": cv, "difference": difference, "threshold": threshold, "aggregation": aggregation,
              "flagged": flagged}
    result["summary"] = to_markdown(comparison(result))
    return result


def comparison(result: dict) -> list[tuple]:
    """The CV estimate and the external one side by side, per patient, and the AUC difference (report blocks)."""

    external, cv = result["metrics"]["patient"], result["cv"]
    header = ["per patient", f"CV estimate ({cv['what'] if cv else 'not available'})",
              f"external ({len(result['patients'])} patients)", "external - CV"]
    rows = []
    for name in REPORTED:
        theirs, ours = (cv["metrics"].get(name) if cv else None), external[name]
        rows.append([SHOWN[name], ci_text(theirs, cv["metrics"].get(name + "_ci") if cv else None),
                     ci_text(ours, external[name + "_ci"]), "" if theirs is None else f"{ours - theirs:+.2f}"])
    difference = result["difference"]
    if difference is not None:
        low, high = difference["ci"]
        note = (f"AUC difference (external - CV) {difference['difference']:+.2f}, 95% CI {low:+.2f} to "
                f"{high:+.2f} (DeLong, unpaired), {p_clause(difference['p'])}.")
    elif cv is None:
        note = "The model's CV run is not in this store: no CV estimate to compare with."
    else:
        note = ("The model's CV run could not be read: its AUC comes from the model's contract, and the difference "
                "has no CI (that needs the CV's predictions).")
    return [("table", header, rows), ("p", note)]


def _cv_predictions(tracker, contract: dict) -> dict | None:
    """The model's CV run's pooled per-patient predictions and metrics; the contract's expected AUC when the
    run cannot be read (a model copied from another store). `contract`: the model's, or an ensemble's
    description (experiments.models.load_members), which names the same keys."""

    expected = contract.get("expected") or {}
    rows = cv_patients(tracker.uri, contract.get("cv_run_id"))
    if rows is None:
        if expected.get("patient_auc") is None:
            return None
        return {"what": expected.get("measured_on", "the model's contract"), "labels": None, "probabilities": None,
                "metrics": {"auc": expected["patient_auc"], "auc_ci": expected.get("patient_auc_ci")}}
    run_id = contract["cv_run_id"]
    pooled = tracker.client.get_run(run_id).data.metrics
    metrics = {name: pooled.get(f"patient_{name}") for name in REPORTED}
    metrics |= {f"{name}_ci": (pooled.get(f"patient_{name}_ci_low"), pooled.get(f"patient_{name}_ci_high"))
                for name in REPORTED if f"patient_{name}_ci_low" in pooled}
    return {"what": f"pooled out-of-fold, {len(rows)} patients, run {run_id[:8]}", "run_id": run_id,
            "labels": [r["label"] for r in rows], "probabilities": [r["probability"] for r in rows],
            "metrics": metrics}


def write_outputs(folder: Path, result: dict, excluded: list[dict], context: dict) -> None:
    """predictions/, plots/, report/ (report.md, report.html, summary.md) and excluded.csv under folder."""

    (folder / "predictions").mkdir(parents=True, exist_ok=True)
    (folder / "report").mkdir(parents=True, exist_ok=True)
    write_rows(folder / "predictions" / "slices.csv", result["slices"], SLICE_COLUMNS)
    write_rows(folder / "predictions" / "patients.csv", result["patients"], PATIENT_COLUMNS)
    if excluded:
        write_rows(folder / EXCLUDED, excluded, EXCLUDED_COLUMNS)
    levels = {name: ([r["label"] for r in rows], [r["probability"] for r in rows])
              for name, rows in (("per slice", result["slices"]), ("per patient", result["patients"]))}
    curves = {"external, per patient": levels["per patient"]}
    if result["cv"] and result["cv"].get("labels"):
        curves["CV out-of-fold, per patient"] = (result["cv"]["labels"], result["cv"]["probabilities"])
    roc_figure(folder / "plots" / "roc.png", curves | {"external, per slice": levels["per slice"]},
               "ROC: external cohort against cross-validation")
    confusion_figure(folder / "plots" / "confusion.png", levels, result["threshold"])
    calibration_figure(folder / "plots" / "calibration.png", levels)
    blocks = report_blocks(result, context)
    (folder / "report" / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (folder / "report" / "report.html").write_text(to_html(blocks, script=mlflow_ui_script(context["run_id"])),
                                                   encoding="utf-8")
    (folder / "report" / "summary.md").write_text(result["summary"], encoding="utf-8")


def report_blocks(result: dict, context: dict) -> list[tuple]:
    """The report's headings, paragraphs, tables and figures (experiments.report's block format)."""

    contract, info = context["contract"], context["model_info"]
    metrics, patients = result["metrics"], result["patients"]
    malignant = sum(p["label"] for p in patients)
    cells = confusion([p["label"] for p in patients], [p["probability"] for p in patients], result["threshold"])
    blocks = [
        ("h1", f"vfrac external validation: {context['label']} on {context['manifest'].parent.name}"),
        ("p", f"Validation run {context['run_id']}. Model {context['model']} (role {info.get('role')}, "
              f"trained on cohort {info.get('cohort_hash')}, CV run {info.get('cv_run_id')}). "
              f"Cohort {context['manifest']} (hash {context['cohort_hash']}): {len(patients)} patients analysed "
              f"({malignant} malignant, {len(patients) - malignant} benign), {len(result['slices'])} slices, "
              f"{context['excluded']} left out (excluded.csv). Applied as the model's contract fixes it: "
              f"{result['aggregation']} of the slice probabilities, threshold {result['threshold']}, HU window "
              f"{' and '.join(map(str, context['windows']))}, input {contract['input_size']} px; nothing was tuned "
              "on this cohort."),
        ("h2", "2 x 2 table, per patient"),
        ("table", ["", "called malignant", "called benign"],
         [["malignant", cells["tp"], cells["fn"]], ["benign", cells["fp"], cells["tn"]]]),
        ("h2", "Discrimination (95% CIs: Wilson for patient proportions, patient bootstrap otherwise)"),
        ("table", ["level", *SHOWN.values()],
         [[name, *(ci_text(metrics[level][m], metrics[level][m + "_ci"]) for m in REPORTED)]
          for level, name in LEVELS]),
        ("h2", "Calibration"),
        ("table", ["level", "calibration slope (1 ideal)", "calibration-in-the-large (0 ideal)", "Brier score"],
         [[name, number_text(result["calibration"][level]["slope"]),
           number_text(result["calibration"][level]["in_the_large"]), f"{result['calibration'][level]['brier']:.3f}"]
          for level, name in LEVELS]),
        ("h2", "Cross-validation estimate against this cohort"),
    ]
    blocks += comparison(result)
    blocks += _flag_blocks(result["flagged"])
    blocks.append(("p", "The CV estimate describes the method trained on the development cohort's folds; a "
                        "--final model was trained on all of it. A drop here is what another site's patients and "
                        "scanner cost."))
    blocks += [("img", f"../plots/{name}.png", alt, {"data-artifact": f"plots/{name}.png"})
               for name, alt in (("roc", "ROC"), ("confusion", "2 x 2 tables"), ("calibration", "calibration"))]
    return blocks


def _flag_blocks(flagged: dict) -> list[tuple]:
    rule = flagged["rule"]
    parts = [f"probability within {rule.margin:.2f} of the threshold"]
    if flagged["ensemble"]:
        parts.append(f"SD of the fold models' patient probabilities above {rule.max_spread:.2f}")
    return [("h2", "The uncertain flag"),
            ("p", f"Rule: uncertain when {' or '.join(parts)}. It flagged {flagged['flagged']} of "
                  f"{flagged['patients']} patients; they hold {flagged['errors_flagged']} of the "
                  f"{flagged['errors']} wrong calls.")]


def _tags(model_uri: str, model_info: dict, digest: str) -> dict:

    return {ROLE_TAG: VALIDATION_ROLE, MODEL_TAG: model_uri, MODEL_RUN_ID_TAG: str(model_info.get("run_id")),
            CV_RUN_ID_TAG: str(model_info.get("cv_run_id")), COHORT_HASH_TAG: digest,
            TRAINED_COHORT_HASH_TAG: str(model_info.get("cohort_hash")), GIT_COMMIT_TAG: git_commit(),
            CODE_VERSION_TAG: code_version()}


def _model_experiment(tracking_uri: str, contract: dict) -> str:
    """The experiment of the model's own run, so that its validations sit beside its CV run; else `vfrac`."""

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        return client.get_experiment(client.get_run(contract["run_id"]).info.experiment_id).name
    except (MlflowException, KeyError, TypeError):
        return "vfrac"


def _log(tracker, run_id: str, args, model_uri: str, contract: dict, result: dict, digest: str, manifest: Path,
         seconds: float, excluded: int) -> None:
    """Params, metrics (a CV run's names, so the UI compares them), the cohort as dataset, the registry link."""

    tracker.params(run_id, {"model": model_uri, "cohort": str(manifest), "threshold": result["threshold"],
                            "aggregation": result["aggregation"], "input_size": contract["input_size"],
                            "window": contract["window"], **contract["crop"], "patients": len(result["patients"]),
                            "excluded": excluded, "skip_bad": args.skip_bad})
    metrics = cv_metrics(result["metrics"]) | {"prediction_seconds": seconds}
    for level in ("slice", "patient"):
        found = result["calibration"][level]
        metrics |= {f"{level}_calibration_slope": found["slope"],
                    f"{level}_calibration_in_the_large": found["in_the_large"], f"{level}_brier": found["brier"]}
    flagged = result["flagged"]
    metrics |= {"uncertain_patients": flagged["flagged"], "errors": flagged["errors"],
                "errors_flagged_uncertain": flagged["errors_flagged"]}
    if result["cv"]:
        metrics["cv_patient_auc"] = result["cv"]["metrics"].get("auc")
    if result["difference"]:
        low, high = result["difference"]["ci"]
        metrics |= {"auc_difference": result["difference"]["difference"], "auc_difference_ci_low": low,
                    "auc_difference_ci_high": high, "auc_difference_p": result["difference"]["p"]}
    tracker.metrics(run_id, metrics)
    log_cohort(tracker.client, run_id, manifest, digest, context="validation")
    _tag_model_version(tracker.client, model_uri, run_id, digest)


def _tag_model_version(client, uri: str, run_id: str, digest: str) -> None:
    """On a registered version, a tag per validated cohort naming its validation run (the link back)."""


    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@(.+))", uri)
    if not match:
        return
    name, number, alias = match.groups()
    try:
        version = number or client.get_model_version_by_alias(name, alias).version
        client.set_model_version_tag(name, version, f"{VALIDATION_VERSION_TAG}{digest[:16]}", run_id)
    except MlflowException as error:  # the registry may be read-only to this user: the run still holds the link
        print(f"note: could not tag {uri} with this validation: {str(error).splitlines()[0]}")
