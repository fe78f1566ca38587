"""The model to use: `experiments.cv --final` registers it with its contract; `experiments.predict` applies
it (or a fold's model) to one patient, on synthetic and real CT, and refuses what it cannot do right."""

import json
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pydicom
import pytest
from mlflow import MlflowClient
from mlflow.models import Model

from experiments.cv import main as cv
from experiments.model_package import CONTRACT_VERSION, PREPROCESSING, check_contract
from experiments.predict import main as predict
from explain.overlay import cam_on_slice
from tests.mlflow_store import artifact_rows
from tests.shared_run import final_model_store
from vfrac.cohort import read_manifest
from vfrac.data.crops import input_to_slice
from vfrac.errors import InputError
from vfrac.io.grid import place_on_grid
from vfrac.io.nifti import read_nifti
from vfrac.io.volume import load_mask, load_volume
from vfrac.stats.ensemble import UncertaintyRule, fit_recalibration, flagged_share
from vfrac.stats.metrics import aggregate

pytestmark = [pytest.mark.slow]
REAL = Path(__file__).resolve().parents[2] / "examples" / "real-ct"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny CV run with --final: (its folder, the command's arguments, the first run's console output)."""
    return final_model_store(tmp_path_factory)


def client_of(folder) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db", registry_uri=f"sqlite:///{folder}/mlflow.db")


def role(client, name):
    experiment = client.get_experiment_by_name("vfrac")
    return client.search_runs([experiment.experiment_id], f"tags.`vfrac.role` = '{name}'")


def run_predict(folder, *argv):
    return predict([*argv, "--tracking-uri", f"sqlite:///{folder}/mlflow.db"])


def test_final_model_is_registered_with_its_contract_dataset_and_cv_results(store, tmp_path):
    folder, _, first_output = store
    client = client_of(folder)
    (cv_run,), (final_run,) = role(client, "cv"), role(client, "final")
    assert final_run.data.tags["mlflow.parentRunId"] == cv_run.info.run_id
    assert "final: tuning, 1 of 1 trial(s) to run" in first_output  # the CV run's protocol, on every patient
    assert "final: model on all 12 patients, 1 epoch(s)\n" in first_output
    (trial,) = [t for t in role(client, "trial") if t.data.tags["mlflow.parentRunId"] == final_run.info.run_id]
    assert trial.info.run_name == "final trial 0" and "inner_val_patient_auc" in trial.data.metrics
    assert final_run.data.params["best_learning_rate"] == str(trial.data.params["learning_rate"])
    assert "final model: models:/vfrac-resnet50/1" in first_output
    (version,) = client.search_model_versions("name = 'vfrac-resnet50'")
    assert version.run_id == final_run.info.run_id and str(version.version) == "1"
    summary = Path(client.download_artifacts(cv_run.info.run_id, "summary.md", str(tmp_path))).read_text()
    assert version.description == summary and "per patient, vfrac (pooled)" in summary
    (dataset,) = final_run.inputs.dataset_inputs
    assert dataset.dataset.digest == cv_run.data.tags["vfrac.cohort_hash"]
    assert dataset.dataset.name == "cohort/manifest.csv" and dataset.tags[0].value == "training"
    model_dir = Path(client.download_artifacts(final_run.info.run_id, "model", str(tmp_path)))
    mlmodel = Model.load(str(model_dir))
    contract = mlmodel.metadata["vfrac"]
    assert (contract["contract"], contract["preprocessing"]) == (CONTRACT_VERSION, PREPROCESSING)
    assert (contract["input_size"], contract["aggregation"], contract["threshold"]) == (32, "mean", 0.5)
    assert contract["window"] == [400.0, 1800.0] and contract["crop"]["min_area"] == 0.35
    assert contract["cohort_hash"] == cv_run.data.tags["vfrac.cohort_hash"]
    assert contract["code_version"] == cv_run.data.tags["vfrac.code_version"]
    assert contract["role"] == "final" and contract["cv_run_id"] == cv_run.info.run_id
    assert contract["expected"]["patient_auc"] == pytest.approx(cv_run.data.metrics["patient_auc"])
    assert mlmodel.signature.inputs.inputs[0].shape == (-1, 32, 32, 3)
    example = json.loads((model_dir / "input_example.json").read_text())
    assert np.asarray(example["inputs"] if isinstance(example, dict) else example).shape == (1, 32, 32, 3)


def test_rerunning_the_command_reuses_the_final_model(store, capsys, monkeypatch, tmp_path):
    folder, argv, _ = store
    monkeypatch.chdir(tmp_path)
    assert cv(argv) == 0
    output = capsys.readouterr().out
    assert "final: already trained, reused" in output and "final: model on all" not in output
    client = client_of(folder)
    assert len(role(client, "final")) == 1
    assert len(client.search_model_versions("name = 'vfrac-resnet50'")) == 1
    assert cv([*argv, "--model-name", "vfrac-other"]) == 0  # the same model, registered under the name asked for
    assert "final model: models:/vfrac-other/1" in capsys.readouterr().out
    (other,) = client.search_model_versions("name = 'vfrac-other'")
    assert other.run_id == role(client, "final")[0].info.run_id


def test_predict_with_a_fold_model_reproduces_its_slice_probabilities(store, tmp_path, capsys):
    folder, _, _ = store
    client = client_of(folder)
    fold = next(r for r in role(client, "fold") if r.data.tags["vfrac.fold"] == "0")
    rows = artifact_rows(client, fold.info.run_id, "predictions/slices.csv", tmp_path / "a")
    patient_id = rows[0]["patient_id"]
    expected = {int(r["slice"]): float(r["probability"]) for r in rows if r["patient_id"] == patient_id}
    patient = next(p for p in read_manifest(folder / "cohort" / "manifest.csv").patients
                   if p.patient_id == patient_id)
    out = tmp_path / "out"
    assert run_predict(folder, "--model", f"runs:/{fold.info.run_id}/model", "--ct", str(patient.ct),
                       "--roi", str(patient.roi), "--patient-id", patient_id, "--out", str(out)) == 0
    prediction = json.loads((out / "prediction.json").read_text())
    got = {s["slice"]: s["probability"] for s in prediction["slices"]}
    assert got.keys() == expected.keys()
    assert [got[z] for z in sorted(got)] == pytest.approx([expected[z] for z in sorted(expected)], abs=1e-5)
    _, _, (mean,) = aggregate([patient_id] * len(expected), list(expected.values()), [0] * len(expected), "mean")
    assert prediction["probability"] == pytest.approx(mean, abs=1e-5)
    assert prediction["model"]["role"] == "fold" and prediction["model"]["fold"] == 0
    header = pydicom.dcmread(next(patient.ct.iterdir()), stop_before_pixels=True)
    written = (out / "prediction.json").read_text() + (out / "sheet.html").read_text()
    for identity in (str(header.PatientName), header.PatientID, header.StudyInstanceUID, header.SOPInstanceUID):
        assert identity and identity not in written  # only --patient-id names the patient
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(f"{patient_id}: "))
    call = "malignant" if mean >= 0.5 else "benign"
    assert line.startswith(f"{patient_id}: {call}, p = {mean:.2f} (threshold 0.50; model runs:/")
    assert "fold 0 AUC" in line


def test_the_fold_ensemble_averages_its_members_and_flags_what_a_radiologist_must_see(store, tmp_path, capsys):
    folder, _, _ = store
    client = client_of(folder)
    (cv_run,) = role(client, "cv")
    folds = sorted(role(client, "fold"), key=lambda r: r.data.tags["vfrac.fold"])
    patient = read_manifest(folder / "cohort" / "manifest.csv").patients[0]
    where = ["--ct", str(patient.ct), "--roi", str(patient.roi), "--patient-id", patient.patient_id]
    singles = []
    for fold in folds:  # each member on its own, as predict gives it
        out = tmp_path / f"fold{fold.data.tags['vfrac.fold']}"
        assert run_predict(folder, "--model", f"runs:/{fold.info.run_id}/model", *where, "--out", str(out)) == 0
        singles.append(json.loads((out / "prediction.json").read_text()))
    assert run_predict(folder, "--ensemble", cv_run.info.run_id, *where, "--out", str(tmp_path / "e"),
                       "--recalibrate", "platt", "--uncertainty-margin", "0.45") == 0
    prediction = json.loads((tmp_path / "e" / "prediction.json").read_text())
    members = [single["probability"] for single in singles]
    found = prediction["uncertainty"]
    assert found["members"] == pytest.approx(members, abs=1e-5)
    assert prediction["probability"] == pytest.approx(np.mean(members), abs=1e-5)
    assert found["spread_sd"] == pytest.approx(np.std(members, ddof=1), abs=1e-5)
    for k, entry in enumerate(prediction["slices"]):  # slice probabilities: the members' mean
        assert entry["probability"] == pytest.approx(np.mean([s["slices"][k]["probability"] for s in singles]),
                                                     abs=1e-5)
    assert prediction["uncertain"] and found["reasons"][0].startswith("probability")  # within 0.45 of 0.5
    assert prediction["model"]["role"] == "ensemble" and len(prediction["model"]["members"]) == 2
    oof = artifact_rows(client, cv_run.info.run_id, "predictions/patients.csv", tmp_path / "oof")
    labels, probabilities = [int(r["label"]) for r in oof], [float(r["probability"]) for r in oof]
    checked = flagged_share(labels, probabilities, 0.5, UncertaintyRule(margin=0.45))
    assert {k: found["rule_checked"][k] for k in checked} == pytest.approx(checked, nan_ok=True)
    stored = client.list_artifacts(cv_run.info.run_id, "recalibration")
    assert [a.path for a in stored] == ["recalibration/platt.json"]  # fitted once, kept with the CV run
    fitted = fit_recalibration(labels, probabilities, "platt")
    assert found["recalibration"]["slope"] == pytest.approx(fitted.parameters["slope"])
    assert found["recalibration"]["risk"] == pytest.approx(fitted.apply([prediction["probability"]])[0])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith(f"{patient.patient_id}: ") and f" +- {found['spread_sd']:.2f} " in lines[-2]
    assert lines[-1].startswith("UNCERTAIN, a radiologist must look: probability")
    assert "Uncertain: a radiologist must look." in (tmp_path / "e" / "sheet.html").read_text()


def test_an_ensemble_needs_a_cv_run_and_sane_rule(store, capsys):
    folder, _, _ = store
    (final,) = role(client_of(folder), "final")
    patient = read_manifest(folder / "cohort" / "manifest.csv").patients[0]
    assert run_predict(folder, "--ensemble", final.info.run_id, "--ct", str(patient.ct), "--roi", str(patient.roi),
                       "--out", str(folder / "never")) == 2
    assert "not a vfrac CV run" in capsys.readouterr().err
    for argv, message in ((["--uncertainty-margin", "0.7"], "margin must be in"),
                          (["--model", "models:/m/1"], "not allowed")):
        with pytest.raises(SystemExit):
            predict(["--ensemble", final.info.run_id, "--ct", "c", "--roi", "r", *argv])
        assert message in capsys.readouterr().err


def test_predict_on_a_real_dicom_series_maps_the_overlays_back_onto_the_roi(store, tmp_path, capsys):
    folder, _, _ = store
    out = tmp_path / "dicom"
    labels = REAL / "abdomen-t11-t12-labels.nii.gz"
    assert run_predict(folder, "--model", "models:/vfrac-resnet50/1", "--ct", str(REAL / "abdomen-t11-t12-dicom"),
                       "--roi", str(labels), "--roi-label", "32", "--out", str(out), "--dicom") == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("VF-NEW: ") and "(threshold 0.50; model vfrac-resnet50 v1, CV AUC " in line
    prediction = json.loads((out / "prediction.json").read_text())
    assert 0.0 <= prediction["probability"] <= 1.0
    assert prediction["call"] == ("malignant" if prediction["probability"] >= 0.5 else "benign")
    volume = load_volume(REAL / "abdomen-t11-t12-dicom")
    roi = load_mask(labels, volume) == 32
    assert prediction["input"]["ct_shape"] == list(volume.shape) and prediction["slices"]
    for entry in prediction["slices"]:
        z = entry["slice"]
        covered = cam_on_slice(np.ones((32, 32)), input_to_slice(entry["box"], 0.2, 192, 32), roi[z].shape)[1]
        assert roi[z].any() and covered[roi[z]].all()  # the crop shown holds the whole ROI of its slice
        image = cv2.imread(str(out / entry["overlays"]["gradcam"]["slice"]))[:512, :512].astype(int)
        coloured = (image.max(axis=2) - image.min(axis=2)) > 8  # grey CT everywhere else
        near = cv2.dilate(covered.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # bilinear fringe: 2 px
        assert coloured[covered].any() and not coloured[~near].any()
    assert len(list((out / "dicom").glob("*.dcm"))) == len(prediction["slices"])  # the call's overlays only
    assert_maps_land_on_the_crops(out / prediction["maps"]["gradcam"], volume, prediction["slices"])
    maps = prediction["maps"]
    assert_parametric_map_equals_the_nifti(out / maps["gradcam_dicom"], out / maps["gradcam"], volume)
    assert [p.name for p in (out / "dicom" / "maps").iterdir()] == ["gradcam.dcm"]
    # beside each map of the call, the other class's: listed, on the CT's grid, and on the sheet
    assert prediction["other_class_maps"] == {"gradcam": "maps/gradcam_other.nii.gz"}
    other_map, called_map = (read_nifti(out / path, np.float32)[0] for path in ("maps/gradcam_other.nii.gz",
                                                                                maps["gradcam"]))
    assert other_map.shape == volume.shape and other_map.min() >= 0 and other_map.max() <= 1
    assert set(np.flatnonzero(other_map.any(axis=(1, 2)))) <= {entry["slice"] for entry in prediction["slices"]}
    assert not np.array_equal(other_map, called_map)
    sheet = (out / "sheet.html").read_text()
    assert "VF-NEW: " in sheet and all(s["overlays"]["gradcam"]["crop"] in sheet for s in prediction["slices"])
    for entry in prediction["slices"]:
        call, other = ("malignant", "benign") if entry["probability"] >= 0.5 else ("benign", "malignant")
        images = entry["other_class_overlays"]["gradcam"]
        assert images == {"crop": f"overlays/gradcam_other_z{entry['slice']}_crop.png",
                          "slice": f"overlays/gradcam_other_z{entry['slice']}_slice.png"}
        assert all((out / path).is_file() and path in sheet for path in images.values())
        assert f"gradcam on the crop: evidence for {call} (the call), beside it for {other}" in sheet


def assert_maps_land_on_the_crops(path: Path, volume, slices) -> None:
    """The NIfTI map, read by nibabel with its own affine, is non-zero only on the crops' voxels of the CT."""
    image = nib.load(str(path))
    data = np.asarray(image.dataobj)  # (i, j, k) in the file's own order
    assert data.shape == tuple(reversed(volume.shape)) and data.dtype == np.float32 and data.max() <= 1.0
    to_ct = np.linalg.inv(volume.affine) @ np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # (i,j,k) -> (z,y,x)
    crops = np.zeros(volume.shape, bool)
    for entry in slices:
        covered = cam_on_slice(np.ones((32, 32)), input_to_slice(entry["box"], 0.2, 192, 32),
                               volume.shape[1:])[1]
        # bilinear fringe: 2 px along the edges, 3 at the corners
        crops[entry["slice"]] = cv2.dilate(covered.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    ijk = np.argwhere(data > 0)
    assert len(ijk) > 100
    zyx = to_ct @ np.c_[ijk, np.ones(len(ijk))].T
    indices = np.round(zyx[:3]).astype(int)
    assert np.allclose(zyx[:3], indices, atol=1e-3)  # the map's voxels are the CT's voxels
    assert crops[tuple(indices)].all()  # and each lies in its slice's crop
    assert {int(z) for z in indices[0]} == {entry["slice"] for entry in slices}


def assert_parametric_map_equals_the_nifti(path: Path, nifti: Path, volume) -> None:
    """The --dicom Parametric Map, read back by highdicom and placed by its own geometry, is the NIfTI map; it
    names the patient by the pseudonymous id only and links to nothing of the CT's headers."""
    import highdicom as hd

    dataset = pydicom.dcmread(path)
    assert dataset.PatientID == "VF-NEW" and dataset.PatientName.family_name == "VF-NEW"
    header = pydicom.dcmread(next((REAL / "abdomen-t11-t12-dicom").iterdir()), stop_before_pixels=True)
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert getattr(dataset, uid) != header.get(uid)
    found = hd.pm.ParametricMap.from_dataset(dataset).get_volume()
    placed = place_on_grid(np.asarray(found.array), np.asarray(found.affine), volume, source=path)
    expected, _ = read_nifti(nifti, np.float32)
    np.testing.assert_allclose(placed, expected, atol=1e-6)


def test_predict_picks_a_level_from_a_totalsegmentator_map(store, tmp_path, capsys):
    folder, _, _ = store
    out = tmp_path / "nifti"
    segmentation = REAL / "abdomen-pelvis-vertebrae.nii.gz"
    assert run_predict(folder, "--model", "models:/vfrac-resnet50/1", "--ct", str(REAL / "abdomen-pelvis-ct.nii.gz"),
                       "--segmentation", str(segmentation), "--vertebra", "L1", "--out", str(out)) == 0
    prediction = json.loads((out / "prediction.json").read_text())
    assert (prediction["input"]["roi_label"], prediction["input"]["vertebra"]) == (31, "L1")
    volume = load_volume(REAL / "abdomen-pelvis-ct.nii.gz")
    l1_slices = set(np.flatnonzero((load_mask(segmentation, volume) == 31).any(axis=(1, 2))).tolist())
    used = {s["slice"] for s in prediction["slices"]} | set(prediction["input"]["slices_dropped_by_rule"])
    assert used == l1_slices
    assert run_predict(folder, "--model", "models:/vfrac-resnet50/1", "--ct", str(REAL / "abdomen-pelvis-ct.nii.gz"),
                       "--segmentation", str(segmentation), "--vertebra", "L2", "--out", str(out)) == 2
    assert "not empty; choose another --out, or --force" in capsys.readouterr().err  # no mixing of two patients


def test_predict_refuses_a_model_without_a_vfrac_contract(tmp_path, capsys):
    import keras
    import mlflow

    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(inputs)))
    (tmp_path / "m").mkdir()
    mlflow.keras.save_model(model, str(tmp_path / "m"), pip_requirements=["keras"])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(client.create_experiment("other"))
    client.log_artifacts(run.info.run_id, str(tmp_path / "m"), "model")
    patient = ["--ct", str(REAL / "abdomen-pelvis-ct.nii.gz"), "--segmentation",
               str(REAL / "abdomen-pelvis-vertebrae.nii.gz"), "--vertebra", "L1", "--out", str(tmp_path / "out")]
    assert run_predict(tmp_path, "--model", f"runs:/{run.info.run_id}/model", *patient) == 2
    assert "no vfrac input contract in the model's metadata" in capsys.readouterr().err
    assert run_predict(tmp_path, "--model", "models:/vfrac-resnet50/7", *patient) == 2
    assert "models:/vfrac-resnet50/7: no such model in sqlite:///" in capsys.readouterr().err


GOOD = {"contract": CONTRACT_VERSION, "preprocessing": PREPROCESSING, "input_size": 64, "window": [400.0, 1800.0],
        "crop": {"margin": 0.1, "box_mode": "slice", "context": 0.2, "cache_size": 192, "min_area": 0.35},
        "aggregation": "mean", "threshold": 0.5}


@pytest.mark.parametrize("change, message", [
    ({"input_size": 224}, r"the contract says input 224 x 224 x 3 but the network takes 64 x 64 x 3"),
    ({"preprocessing": "imagenet-torch"}, r"with preprocessing 'imagenet-torch'; this vfrac reproduces contract 1"),
    ({"contract": 2}, r"contract 2 with preprocessing"),
    ({"aggregation": "median"}, r"aggregation 'median' or threshold 0.5 is not one this vfrac applies"),
    ({"crop": GOOD["crop"] | {"box_mode": "sphere"}}, r"the contract's crop settings are not reproducible"),
    ({"window": None}, r"the model's contract lacks window"),
    ({"window": [400.0, 0.0]}, r"HU window \[400.0, 0.0\] is not a level and a positive width"),
    ({"crop": {k: v for k, v in GOOD["crop"].items() if k != "context"}}, r"must name exactly box_mode, cache_size"),
])
def test_contracts_this_code_cannot_reproduce_are_refused(change, message):
    metadata = {"vfrac": {k: v for k, v in (GOOD | change).items() if v is not None}}
    with pytest.raises(InputError, match=message):
        check_contract(metadata, (None, 64, 64, 3), "models:/m/1")
    assert check_contract({"vfrac": GOOD}, (None, 64, 64, 3), "models:/m/1") == GOOD


@pytest.mark.parametrize("argv, message", [
    (["--ct", "abdomen-pelvis-ct.nii.gz", "--roi", "abdomen-t11-t12-labels.nii.gz", "--roi-label", "32"],
     "its voxel grid is not the CT's grid"),
    (["--ct", "abdomen-pelvis-ct.nii.gz", "--roi", "abdomen-pelvis-vertebrae.nii.gz", "--roi-label", "44"],
     "the ROI mask has no voxel with label 44"),
    (["--ct", "abdomen-pelvis-ct.nii.gz", "--segmentation", "abdomen-pelvis-vertebrae.nii.gz", "--vertebra", "C3"],
     "no C3 (label 48) in this map"),
    (["--ct", "abdomen-pelvis-ct.nii.gz", "--roi", "abdomen-pelvis-vertebrae.nii.gz"],
     "the ROI mask holds several labels"),
])
def test_patient_input_that_cannot_be_classified_is_refused_before_the_model_loads(argv, message, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.chdir(REAL)
    assert run_predict(tmp_path, "--model", "models:/never-loaded/1", *argv) == 2
    assert message in capsys.readouterr().err


def test_an_empty_roi_is_refused(tmp_path, capsys):
    volume = load_volume(REAL / "abdomen-pelvis-ct.nii.gz")
    np.save(tmp_path / "empty.npy", np.zeros(volume.shape, np.uint8))
    assert run_predict(tmp_path, "--model", "models:/never-loaded/1", "--ct", str(REAL / "abdomen-pelvis-ct.nii.gz"),
                       "--roi", str(tmp_path / "empty.npy")) == 2
    assert "the ROI mask has no voxel set" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--segmentation", "s.nii.gz"], "--segmentation needs --vertebra"),
    (["--roi", "r.nii.gz", "--vertebra", "L1"], "--vertebra picks a level in --segmentation"),
    (["--roi", "r.nii.gz", "--patient-id", "Smith, John"], "letters, digits"),
])
def test_bad_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        predict(["--model", "models:/m/1", "--ct", "ct.nii.gz", *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_force_replaces_only_an_earlier_predictions_files(tmp_path):
    from experiments.prediction import OUTPUTS, clear_outputs

    for name in OUTPUTS:
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("old")
    (tmp_path / "overlays" / "gradcam_z9_crop.png").write_text("stale")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        clear_outputs(tmp_path, force=False)
    clear_outputs(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_bench_predict_times_every_stage_of_one_call(store, tmp_path):
    """bench/bench_predict.py's core, on the registered model: each stage's seconds and the whole call."""
    from bench.bench_predict import PATIENTS, once

    folder, _, _ = store
    model = ["--model", "models:/vfrac-resnet50/1", "--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
    seconds = once(model, PATIENTS["NIfTI + TotalSegmentator (L1)"], tmp_path / "b")
    assert {"predict", "explain", "total"} <= set(seconds) and all(v >= 0 for v in seconds.values()), seconds
    assert seconds["total"] >= seconds["predict"]
