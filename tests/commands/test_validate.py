"""`experiments.validate`: the registered model on another site's cohort (another seed, a shifted scanner);
its run, report and metrics must equal what its own prediction tables give when recomputed here."""

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from experiments.validate import main as validate
from tests.shared_run import final_model_store
from vfrac.stats.metrics import aggregate, binary_metrics, calibration
from vfrac.stats.statistics import unpaired_auc_difference
from vfrac.synth import generate_cohort
from vfrac.synth.params import Site

pytestmark = [pytest.mark.slow]
MODEL = "models:/vfrac-resnet50/1"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return final_model_store(tmp_path_factory)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Path:
    """Another site: a new seed, twice the noise, 3 mm slices and a +40 HU calibration offset."""
    folder = tmp_path_factory.mktemp("site")
    return generate_cohort(folder / "other", 10, seed=31, matrix=96,
                           site=Site(noise_scale=2.0, slice_thickness=3.0, hu_offset=40.0))


def run_validate(store, *argv, model: str | None = MODEL) -> int:
    folder = store[0]
    return validate([*(["--model", model] if model else []), "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
                     "--cache-dir", str(folder / "cache"), *argv])


def client_of(folder) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db", registry_uri=f"sqlite:///{folder}/mlflow.db")


def validations(client, digest=None):
    query = "tags.`vfrac.role` = 'validation'" + (f" and tags.`vfrac.cohort_hash` = '{digest}'" if digest else "")
    return client.search_runs([client.get_experiment_by_name("vfrac").experiment_id], query)


def read(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_validation_run_numbers_equal_those_recomputed_from_its_predictions(store, shifted, tmp_path, capsys):
    folder = store[0]
    assert run_validate(store, "--cohort", str(shifted), "--out", str(tmp_path / "out")) == 0
    output = capsys.readouterr().out
    client = client_of(folder)
    (run,) = validations(client)
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["vfrac.model"] == MODEL and run.info.status == "FINISHED"
    (final,) = client.search_runs([run.info.experiment_id], "tags.`vfrac.role` = 'final'")
    assert tags["vfrac.model_run_id"] == final.info.run_id and tags["vfrac.cv_run_id"] == final.data.tags[
        "mlflow.parentRunId"]
    version = client.get_model_version("vfrac-resnet50", "1")  # the link back from the registry
    assert version.tags[f"vfrac.validation.{tags['vfrac.cohort_hash'][:16]}"] == run.info.run_id
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == tags["vfrac.cohort_hash"] and dataset.tags[0].value == "validation"
    assert tags["vfrac.cohort_hash"] != tags["vfrac.trained_cohort_hash"]

    slices = read(client.download_artifacts(run.info.run_id, "predictions/slices.csv", str(tmp_path / "a")))
    patients = read(client.download_artifacts(run.info.run_id, "predictions/patients.csv", str(tmp_path / "a")))
    manifest = {r["patient_id"]: int(r["label"] == "malignant") for r in read(shifted)}
    assert sorted(p["patient_id"] for p in patients) == sorted(manifest)  # every patient predicted once
    assert all(int(p["label"]) == manifest[p["patient_id"]] for p in patients)
    ids, labels, probabilities = aggregate([r["patient_id"] for r in slices], [float(r["probability"]) for r in slices],
                                           [int(r["label"]) for r in slices], "mean")  # the model's contract
    by_id = {p["patient_id"]: float(p["probability"]) for p in patients}
    assert [by_id[i] for i in ids] == pytest.approx(list(probabilities))
    recomputed = binary_metrics(labels, probabilities, 0.5)
    for name in ("sensitivity", "specificity", "accuracy", "auc"):
        assert metrics[f"patient_{name}"] == pytest.approx(recomputed[name])
    slice_metrics = binary_metrics([int(r["label"]) for r in slices], [float(r["probability"]) for r in slices])
    assert metrics["slice_auc"] == pytest.approx(slice_metrics["auc"])
    assert metrics["patient_calibration_slope"] == pytest.approx(calibration(labels, probabilities)["slope"])
    cv_patients = read(client.download_artifacts(tags["vfrac.cv_run_id"], "predictions/patients.csv",
                                                 str(tmp_path / "cv")))
    difference = unpaired_auc_difference(labels, probabilities, [int(r["label"]) for r in cv_patients],
                                         [float(r["probability"]) for r in cv_patients])
    assert metrics["auc_difference"] == pytest.approx(difference["difference"])
    assert metrics["auc_difference_ci_low"] == pytest.approx(difference["ci"][0])
    cv_auc = client.get_run(tags["vfrac.cv_run_id"]).data.metrics["patient_auc"]
    assert metrics["cv_patient_auc"] == pytest.approx(cv_auc)

    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert f"| malignant | {recomputed['tp']} | {recomputed['fn']} |" in report
    low, high = difference["ci"]
    assert f"{difference['difference']:+.2f}, 95% CI {low:+.2f} to {high:+.2f}" in report and report.count("n/a") == 0
    row = next(line for line in report.splitlines() if line.startswith("| per patient | "))  # discrimination
    assert row.endswith(f"| {recomputed['auc']:.2f} ({metrics['patient_auc_ci_low']:.2f}-"
                        f"{metrics['patient_auc_ci_high']:.2f}) |")
    assert {p.name for p in (tmp_path / "out" / "plots").iterdir()} == {"roc.png", "confusion.png", "calibration.png"}
    assert "external - CV" in output and run.info.run_id in output
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/summary.md"} <= artifacts
    page = (tmp_path / "out" / "report" / "report.html").read_text()  # inside the MLflow UI, by artifact path:
    figures = re.findall(r"data-artifact='([^']+)'", page)
    assert figures == ["plots/roc.png", "plots/confusion.png", "plots/calibration.png"] and run.info.run_id in page
    assert set(figures) <= {a.path for a in client.list_artifacts(run.info.run_id, "plots")}


def test_a_rerun_reuses_the_finished_validation_unless_the_rule_changed(store, shifted, tmp_path, capsys):
    client = client_of(store[0])
    assert run_validate(store, "--cohort", str(shifted)) == 0
    before = validations(client)
    out = tmp_path / "again"
    out.mkdir()
    (out / "notes.txt").write_text("mine, not the run's")
    assert run_validate(store, "--cohort", str(shifted), "--out", str(out)) == 0
    assert "already done" in capsys.readouterr().out
    assert len(validations(client)) == len(before)
    assert (out / "report" / "report.md").is_file()  # the reused run's files, as a new run would write them
    assert run_validate(store, "--cohort", str(shifted), "--uncertainty-margin", "0.2", "--out", str(out)) == 0
    assert "already done" not in capsys.readouterr().out
    (newest,) = [r for r in validations(client) if r.info.run_id not in {b.info.run_id for b in before}]
    logged = {a.path for a in client.list_artifacts(newest.info.run_id)}
    assert logged == {"predictions", "plots", "report"}  # --out's own files are not logged


def test_bad_rows_stop_the_run_or_are_listed_with_skip_bad(store, shifted, tmp_path, capsys):
    cohort = tmp_path / "broken"
    shutil.copytree(shifted.parent, cohort)
    rows = read(cohort / "manifest.csv")
    lost = rows[0]["patient_id"]
    shutil.rmtree(cohort / rows[0]["ct"])  # a CT that did not arrive
    assert run_validate(store, "--cohort", str(cohort / "manifest.csv")) == 2
    assert lost in capsys.readouterr().err
    argv = ["--cohort", str(cohort / "manifest.csv"), "--skip-bad", "--out", str(tmp_path / "o")]
    assert run_validate(store, *argv) == 0
    output = capsys.readouterr().out
    assert f"--skip-bad: left out (row): {cohort / 'manifest.csv'}, row 1 (patient_id {lost}), column ct" in output
    (excluded,) = read(tmp_path / "o" / "excluded.csv")
    assert f"(patient_id {lost})" in excluded["reason"]
    patients = read(tmp_path / "o" / "predictions" / "patients.csv")
    assert len(patients) == len(rows) - 1 and lost not in {p["patient_id"] for p in patients}


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "models:/no-such-model/1"], "models:/no-such-model/1: no such model"),
    (["--cohort", "/nonexistent/manifest.csv"], "cohort manifest not found"),
])
def test_unknown_models_and_cohorts_are_refused(store, shifted, argv, message, capsys):
    assert run_validate(store, "--cohort", str(shifted), *argv, model=None if argv[0] == "--model" else MODEL) == 2
    assert message in capsys.readouterr().err


def test_a_cohort_of_one_class_is_refused(store, shifted, tmp_path, capsys):
    cohort = tmp_path / "one-class"
    shutil.copytree(shifted.parent, cohort)
    rows = [r for r in read(cohort / "manifest.csv") if r["label"] == "malignant"]
    with open(cohort / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert run_validate(store, "--cohort", str(cohort / "manifest.csv")) == 2
    assert f"{len(rows)} malignant and 0 benign patient(s) left; an AUC and its CI need at least 2 of each" in \
        capsys.readouterr().err


def test_the_fold_ensemble_on_the_other_site_gives_each_patients_spread_and_flag(store, shifted, tmp_path):
    folder = store[0]
    client = client_of(folder)
    (cv_run,) = client.search_runs([client.get_experiment_by_name("vfrac").experiment_id], "tags.`vfrac.role` = 'cv'")
    folds = client.search_runs([cv_run.info.experiment_id], "tags.`vfrac.role` = 'fold'")
    members = []
    for fold in sorted(folds, key=lambda r: r.data.tags["vfrac.fold"]):  # each member validated on its own
        out = tmp_path / f"fold{fold.data.tags['vfrac.fold']}"
        assert run_validate(store, "--cohort", str(shifted), "--out", str(out),
                            model=f"runs:/{fold.info.run_id}/model") == 0
        members.append({r["patient_id"]: float(r["probability"]) for r in read(out / "predictions" / "patients.csv")})
    assert run_validate(store, "--cohort", str(shifted), "--ensemble", cv_run.info.run_id,
                        "--uncertainty-margin", "0.05", "--max-spread", "0.02", "--out", str(tmp_path / "e"),
                        model=None) == 0
    patients = read(tmp_path / "e" / "predictions" / "patients.csv")
    flagged = errors = errors_flagged = 0
    for row in patients:
        values = [member[row["patient_id"]] for member in members]
        probability = float(row["probability"])
        assert probability == pytest.approx(np.mean(values), abs=1e-5)  # the contract's mean rule: linear
        assert float(row["spread_sd"]) == pytest.approx(np.std(values, ddof=1), abs=1e-5)
        uncertain = abs(probability - 0.5) < 0.05 or np.std(values, ddof=1) > 0.02
        assert int(row["uncertain"]) == uncertain
        wrong = int(row["prediction"]) != int(row["label"])
        flagged, errors, errors_flagged = flagged + uncertain, errors + wrong, errors_flagged + (wrong and uncertain)
    (run,) = [r for r in validations(client) if r.data.tags["vfrac.model"] == f"ensemble:{cv_run.info.run_id}"]
    assert (run.data.metrics["uncertain_patients"], run.data.metrics["errors"],
            run.data.metrics["errors_flagged_uncertain"]) == (flagged, errors, errors_flagged)
    report = (tmp_path / "e" / "report" / "report.md").read_text()
    assert f"It flagged {flagged} of {len(patients)} patients; they hold {errors_flagged} of the {errors}" in report
