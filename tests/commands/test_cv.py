"""The whole command on a tiny synthetic cohort: run tree, predictions, review, report, privacy.

A run killed inside a trial and run again, and two processes on one store, are in tests/commands/test_faults.py, which
compares them with this file's run (tests/shared_run.py: one run for both).
"""

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from bench.bench_faults import TINY, studies
from explain.review import main as review
from tests.mlflow_store import artifact_rows, runs
from tests.shared_run import tiny_cohort, uninterrupted_run
from vfrac.cohort import read_manifest
from vfrac.io.nifti import read_nifti
from vfrac.io.volume import load_volume
from vfrac.stats.metrics import evaluate
from vfrac.stats.statistics import delong_test

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    manifest = tiny_cohort(tmp_path_factory)
    identities = set()
    for path in manifest.parent.rglob("*.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        identities |= {str(header.PatientName), str(header.PatientID), str(header.AccessionNumber),
                       str(header.StudyInstanceUID), str(header.SeriesInstanceUID)}
    return manifest, identities


def cv(manifest, store: Path, *extra):
    """Run the command in a fresh process, as a user would, in `store` as the working folder; its output."""
    store.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "experiments.cv", "--cohort", str(manifest), *TINY,
               "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--storage", f"sqlite:///{store}/optuna.db",
               *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(command, cwd=store, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def finished(cohort, tmp_path_factory):
    """The uninterrupted run, with the review and the report, that tests/commands/test_faults.py compares its
    faults with: its store and its output."""
    store, outcome = uninterrupted_run(tmp_path_factory)
    assert outcome.code == 0, outcome.output
    return store, outcome.output


def test_bench_learning_scores_a_finished_run(finished):
    """bench/bench_learning.py's core on this run: the AUC under each rule, the baseline's, DeLong's p and the
    attention ratios of the review."""
    from bench.bench_learning import scores, table_row

    result = scores(finished[0], explain=True)
    assert {"max", "mean", "topk", "baseline", "delong_max", "delong_mean", "ratio_bone_destruction",
            "slices_pedicle_involvement"} <= set(result)
    assert all(0.0 <= result[name] <= 1.0 for name in ("max", "mean", "topk", "baseline")), result
    assert table_row("seed 4", result | {"seconds": 1.0}).count("|") == 11


def test_the_run_tunes_each_fold_within_its_budget_and_pools_every_patient(finished):
    store, output = finished
    assert "fold 0: tuning, " in output and "fold 1: tuning, " in output, output
    assert "pooled out-of-fold results, 12 patients" in output
    trials = studies(store)
    assert sorted(trials) == ["fold0", "fold1"]
    for fold, rows in trials.items():
        assert sorted(position for _, state, position, _ in rows if state == "COMPLETE") == [0, 1], (fold, rows)
        assert len(rows) == 2, (fold, rows)
    client, by_role = runs(store)
    for run in sum(by_role.values(), []):
        assert run.info.status == "FINISHED" and "vfrac.failure" not in run.data.tags, run.data.tags


def test_a_finished_run_is_not_run_again(cohort, finished):
    store, _ = finished
    output = cv(cohort[0], store)
    assert "every fold and the pooled results are already done" in output
    assert "| per patient, vfrac (pooled) |" in output and "tuning" not in output
    assert len(runs(store)[1]["fold"]) == 2


def test_run_tree_tags_and_artifacts_follow_the_design(finished, tmp_path):
    store, _ = finished
    client, by_role = runs(store)
    (cv_run,) = by_role["cv"]
    assert {"vfrac.cohort_hash", "vfrac.git_commit", "vfrac.preset"} <= set(cv_run.data.tags)
    assert cv_run.info.status == "FINISHED" and cv_run.data.params["folds"] == "2"
    assert cv_run.data.params["conv_gradient"] == "auto" and cv_run.data.params["conv_gradient_active"] == "fast"
    assert sorted(r.data.tags["vfrac.fold"] for r in by_role["fold"]) == ["0", "1"]
    for fold in by_role["fold"]:
        assert fold.data.tags["mlflow.parentRunId"] == cv_run.info.run_id
        assert {"patient_auc", "slice_sensitivity"} <= set(fold.data.metrics)
        assert {"model", "predictions", "study.md"} <= {a.path for a in client.list_artifacts(fold.info.run_id)}
        assert {"baseline_patient_auc", "train_loss"} <= set(fold.data.metrics)
    fold_ids = {r.info.run_id: r.data.tags["vfrac.fold"] for r in by_role["fold"]}
    assert len(by_role["trial"]) == 4
    for trial in by_role["trial"]:
        assert fold_ids[trial.data.tags["mlflow.parentRunId"]] == trial.data.tags["vfrac.fold"]
        assert "vfrac.trial" in trial.data.tags
    names = {a.path for a in client.list_artifacts(cv_run.info.run_id)}
    assert {"splits.json", "predictions", "plots", "summary.md", "config.json", "slice_report.csv"} <= names
    assert {"baseline_patient_auc", "baseline_patient_auc_ci_low", "baseline_delong_p"} <= set(cv_run.data.metrics)
    plots = {a.path for a in client.list_artifacts(cv_run.info.run_id, "plots")}
    assert plots == {"plots/roc.png", "plots/confusion.png", "plots/calibration.png"}


def test_predictions_splits_and_metrics_agree(finished, tmp_path):
    store, _ = finished
    client, by_role = runs(store)
    (cv_run,) = by_role["cv"]
    run_id = cv_run.info.run_id
    splits = json.loads(Path(client.download_artifacts(run_id, "splits.json", str(tmp_path))).read_text())
    for fold in splits:
        assert not set(fold["train"]) & set(fold["test"])
    patients = artifact_rows(client, run_id, "predictions/patients.csv", tmp_path)
    ids = [p["patient_id"] for p in patients]
    assert len(ids) == len(set(ids)) == 12  # every patient predicted exactly once
    test_fold = {pid: fold["fold"] for fold in splits for pid in fold["test"]}
    assert all(int(p["fold"]) == test_fold[p["patient_id"]] for p in patients)
    slices = artifact_rows(client, run_id, "predictions/slices.csv", tmp_path)
    aggregation = cv_run.data.params["aggregation"]
    result = evaluate([s["patient_id"] for s in slices], [int(s["label"]) for s in slices],
                      [float(s["probability"]) for s in slices], aggregation=aggregation, n_boot=10)
    metrics = cv_run.data.metrics
    for level in ("slice", "patient"):
        for name in ("sensitivity", "specificity", "accuracy", "auc"):
            value = metrics[f"{level}_{name}"]
            assert 0.0 <= value <= 1.0
            assert value == pytest.approx(result[level][name], abs=1e-9)
            assert metrics[f"{level}_{name}_ci_low"] <= value + 1e-9 <= metrics[f"{level}_{name}_ci_high"] + 2e-9
    per_patient = {}
    for s in slices:
        per_patient.setdefault(s["patient_id"], []).append(float(s["probability"]))
    rule = {"max": max, "mean": np.mean}[aggregation]
    assert all(float(p["probability"]) == pytest.approx(rule(per_patient[p["patient_id"]])) for p in patients)
    baseline = {b["patient_id"]: b for b in artifact_rows(client, run_id, "predictions/baseline.csv", tmp_path)}
    assert set(baseline) == set(ids) and all(int(b["fold"]) == test_fold[pid] for pid, b in baseline.items())
    labels = [int(p["label"]) for p in patients]
    assert metrics["baseline_patient_auc"] == pytest.approx(
        roc_auc_score(labels, [float(baseline[pid]["probability"]) for pid in ids]))
    delong = delong_test(labels, [float(p["probability"]) for p in patients],
                         [float(baseline[pid]["probability"]) for pid in ids])
    assert metrics["baseline_delong_p"] == pytest.approx(delong["p"])


def test_no_patient_identifier_reaches_the_store_or_the_logs(cohort, finished):
    _, identities = cohort
    store, output = finished
    texts = [output.encode()]
    texts += [path.read_bytes() for path in store.rglob("*") if path.is_file() and "cache" not in path.parts]
    for identity in identities:
        assert all(identity.encode() not in text for text in texts), identity


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_server_serves_the_run_tree(finished):
    store, _ = finished
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{store}/mlflow.db", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))  # no job workers
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        experiment = json.load(urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=vfrac"))["experiment"]
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]], "max_results": 100}).encode())
        found = json.load(urllib.request.urlopen(request))["runs"]
        tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in found]
        (cv_tags,) = [t for t in tags if t.get("vfrac.role") == "cv"]
        cv_id = next(r["info"]["run_id"] for r, t in zip(found, tags, strict=True) if t is cv_tags)
        children = [t for t in tags if t.get("mlflow.parentRunId") == cv_id]
        assert sorted(t["vfrac.fold"] for t in children) == ["0", "1"]
        # The review page's images, as its script asks for them inside the MLflow UI.
        page = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db").download_artifacts(
            cv_id, "review/index.html", str(store / "page"))
        artifact = re.search(r"data-artifact='([^']+)'", Path(page).read_text()).group(1)
        image = urllib.request.urlopen(f"{base}/get-artifact?path={artifact}&run_uuid={cv_id}").read()
        assert image.startswith(b"\x89PNG")
        # The study report's figures too: the same script, each image named by its artifact path.
        report = Path(MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db").download_artifacts(
            cv_id, "report/report.html", str(store / "report-page"))).read_text()
        figures = re.findall(r"data-artifact='([^']+)'", report)
        assert figures == ["report/flow.png", "report/roc.png", "report/calibration.png"] and "get-artifact" in report
        for artifact in figures:
            assert urllib.request.urlopen(f"{base}/get-artifact?path={artifact}&run_uuid={cv_id}").read()[:4] == \
                b"\x89PNG"
    finally:
        server.terminate()
        server.wait(timeout=30)


def cv_run_id(store: Path) -> str:
    (run,) = runs(store)[1]["cv"]
    return run.info.run_id


def test_the_review_is_logged_with_every_image_it_shows(cohort, finished, tmp_path):
    store, output = finished
    assert "explanation: 12 patients" in output and "review page" in output, output
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    run_id = cv_run_id(store)
    local = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    page = (local / "review" / "index.html").read_text()
    sources = re.findall(r"<img src='([^']+)'", page)
    assert len(sources) == 12 * 3 * 2 * 2 * 2  # patients x top slices x methods x (crop, slice) x (call, other class)
    assert all((local / "review" / source).is_file() for source in sources)
    # each slice's map of the call, and beside it the other class's
    assert sources[1] == sources[0].replace("_z", "_other_z") and sources[1].endswith("_crop.png")
    assert len(re.findall(r"on the crop: evidence for (benign|malignant) \(the call\), beside it for", page)) == 36 * 2
    found = sorted((local / "explain" / "maps").glob("*/*.nii.gz"))  # each patient's maps on its CT's grid
    maps = [m for m in found if not m.name.endswith("_other.nii.gz")]
    assert len(maps) == 12 * 2
    others = [m for m in found if m not in maps]  # and the other class's
    assert [m.name for m in others] == ["gradcam_other.nii.gz", "hirescam_other.nii.gz"] * 12
    assert not np.array_equal(read_nifti(others[0], np.float32)[0], read_nifti(maps[0], np.float32)[0])
    patient = next(p for p in read_manifest(cohort[0]).patients if p.patient_id == maps[0].parent.name)
    ct = load_volume(patient.ct)
    data, affine = read_nifti(maps[0], np.float32)
    assert data.shape == ct.shape and np.allclose(affine, ct.affine, atol=1e-4)
    assert 0 < np.count_nonzero(data.any(axis=(1, 2))) <= 3 and data.max() <= 1  # its top slices only
    with open(local / "explain" / "attention.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert set(rows[0]) == {"patient_id", "fold", "slice", "method", "feature", "energy_fraction",
                            "area_fraction", "ratio", "pointing_hit"}
    assert {r["feature"] for r in rows} >= {"soft_tissue_mass", "bone_destruction", "transverse_fracture_line"}
    present = [r for r in rows if float(r["area_fraction"]) > 0 and r["energy_fraction"]]
    assert present and all(0.0 <= float(r["energy_fraction"]) <= 1.0 for r in present)
    assert "Sanity check" in (local / "explain" / "summary.md").read_text()
    with open(local / "explain" / "faithfulness.csv") as handle:
        faithful = list(csv.DictReader(handle))
    assert [(r["method"], r["maps"]) for r in faithful] == [
        ("gradcam", "trained"), ("gradcam", "randomised"), ("hirescam", "trained"), ("hirescam", "randomised"),
        ("none", "random order")]
    assert all(0.0 <= float(r[k]) <= 1.0 for r in faithful for k in ("deletion_auc", "insertion_auc"))
    assert {r["slices"] for r in faithful} == {"6"}
    assert "## Faithfulness" in (local / "explain" / "summary.md").read_text()
    assert f"<td>hirescam</td><td>trained</td><td>{float(faithful[2]['deletion_auc']):.3f}</td>" in page
    calls = re.findall(r"\((incorrect|correct)\)", page)
    with open(local / "predictions" / "patients.csv") as handle:
        wrong = sum(p["prediction"] != p["label"] for p in csv.DictReader(handle))
    assert calls == ["incorrect"] * wrong + ["correct"] * (12 - wrong)  # one per patient, errors first


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_review_page_renders_in_headless_chromium(finished, tmp_path):
    store, _ = finished
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    local = Path(client.download_artifacts(cv_run_id(store), "", str(tmp_path / "run")))
    shot = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
                    f"--screenshot={shot}", (local / "review" / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1600, 1200)
    assert image.std() > 10 and (image[..., 2].astype(int) - image[..., 0] > 60).any()  # text and heat colours


def test_overlays_export_as_a_secondary_capture_series(cohort, finished, tmp_path, monkeypatch, capsys):
    manifest, identities = cohort
    store, _ = finished
    out = tmp_path / "review"
    monkeypatch.chdir(store)  # in process: the command's code is the same, without a second TensorFlow start-up
    assert review(["--run-id", cv_run_id(store), "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--out", str(out),
                   "--dicom", "--no-log", "--method", "hirescam", "--top-slices", "1"]) == 0
    files = sorted((out / "explain" / "dicom").glob("*/*.dcm"))
    assert len(files) == 12  # one overlay per patient: one slice, one method
    uids = set()
    for path in files:
        ds = pydicom.dcmread(path)
        png = cv2.imread(str(next((out / "explain" / "overlays" / ds.PatientID).glob("hirescam_z*_slice.png"))))
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and ds.Modality == "OT"
        assert ds.PatientID == ds.PatientName.family_name == path.parent.name
        assert ds.pixel_array.shape == png.shape and np.array_equal(ds.pixel_array, png[..., ::-1])
        uids |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    assert not uids & identities and len(uids) == 3 * 12
    maps = sorted((out / "explain" / "dicom").glob("*/maps/hirescam.dcm"))  # the map as a Parametric Map
    assert len(maps) == 12
    for path in maps:
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and ds.PatientID == path.parent.parent.name
        assert not {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID} & identities
    capsys.readouterr()
    assert review(["--run-id", "0" * 32, "--tracking-uri", f"sqlite:///{store}/mlflow.db"]) == 2
    assert "no MLflow run" in capsys.readouterr().err


def test_the_study_report_has_every_section_and_the_runs_numbers(cohort, finished, tmp_path):
    _, identities = cohort
    store, output = finished
    assert "study report: report/report.md" in output
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    run = client.get_run(cv_run_id(store))
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    text = (local / "report" / "report.md").read_text()
    html = (local / "report" / "report.html").read_text()
    for section in ("1. Participant flow", "2. Visual reading", "3. Readers", "4. The model",
                    "5. Aggregation and threshold", "6. Where the model looked", "7. Limitations",
                    "8. CLAIM checklist"):
        assert f"## {section}" in text and f"<h2>{section}</h2>" in html
    for figure in ("roc.png", "calibration.png", "flow.png"):
        assert (local / "report" / figure).is_file() and f"({figure})" in text
    card = (local / "report" / "model_card.md").read_text()
    assert "Not a medical device and not for diagnosis" in card and run.data.tags["vfrac.cohort_hash"] in card
    metrics = run.data.metrics
    for level in ("slice", "patient"):
        cells = [f"{metrics[f'{level}_{n}']:.2f} ({metrics[f'{level}_{n}_ci_low']:.2f}-"
                 f"{metrics[f'{level}_{n}_ci_high']:.2f})" for n in ("sensitivity", "specificity", "accuracy")]
        assert f"| per {level}, vfrac pooled | " + " | ".join(cells) in text
    patients = artifact_rows(client, run.info.run_id, "predictions/patients.csv", tmp_path / "p")
    malignant = sum(p["label"] == "1" for p in patients)
    assert f"| analysed | {len(patients) - malignant} | {malignant} | {len(patients)} |" in text
    hits = sum(p["label"] == "1" and p["prediction"] == "1" for p in patients)
    rule = {"max": "max (the study's rule)", "mean": "mean"}[run.data.params["aggregation"]]
    assert f"| {rule}, pre-specified | {hits / malignant:.2f} (" in text
    assert "| per patient, radiomics baseline pooled | " in text and "DeLong p" in text
    for reader in ("senior", "mid", "junior"):
        assert f"| {reader} | {len(patients)} |" in text
    assert "| bone_destruction |" in text and "| gradcam | " in text
    # 2 x 2 per patient from the predictions; the folds' own settings; agreement; the sanity sentence
    cells = {(p["label"], p["prediction"]) for p in patients}
    tp = sum(p["label"] == p["prediction"] == "1" for p in patients)
    fp = sum(p["label"] == "0" and p["prediction"] == "1" for p in patients)
    assert cells and f"| per patient | {tp} | {fp} | {malignant - tp} | {len(patients) - malignant - fp} |" in text
    assert "| fold | learning rate |" in text and "| mid - senior | Cohen |" in text
    assert "Randomisation sanity check (Adebayo et al." in text
    assert "the readers' calls came with a synthetic cohort" in text  # the cohort has vfrac.synth's synth.json
    assert all(identity not in text and identity not in html and identity not in card for identity in identities)


def documented_artifacts() -> set[str]:
    """The paths of docs/tracking.md's table of a CV run's artifacts (first column, in backticks)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "tracking.md").read_text()
    table = text.split("### Artifacts of a CV run", 1)[1].split("\n\n", 3)[2]
    return {re.match(r"\| `([^`]+)`", row).group(1) for row in table.splitlines()[2:]}


def test_the_docs_list_exactly_what_a_cv_run_holds(finished, tmp_path):
    """docs/tracking.md says what the first README command writes into its CV run: every documented file is
    there, and every file or folder of the run's first two levels is documented."""
    store, _ = finished
    local = Path(MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
                 .download_artifacts(cv_run_id(store), "", str(tmp_path)))
    present = {p.relative_to(local).as_posix() + ("/" if p.is_dir() else "")
               for p in [*local.glob("*"), *local.glob("*/*")]}
    documented = documented_artifacts()
    assert len(documented) > 20
    assert documented - present == set(), "documented but not in the run"
    folders = {path for path in documented if path.endswith("/")}
    undocumented = {p for p in present - documented if not any(p.startswith(f) for f in folders)}
    assert undocumented <= {"explain/", "plots/", "predictions/", "report/", "review/"}, undocumented
