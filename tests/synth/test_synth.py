"""The synthetic cohort: reproducible, valid DICOM, right geometry, honest features, no shortcuts."""

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from vfrac.cohort import read_manifest
from vfrac.io.volume import load_mask, load_volume
from vfrac.synth import DEMO as DEMO_SETTINGS
from vfrac.synth import FEATURES, generate_cohort
from vfrac.synth.__main__ import main
from vfrac.synth.anatomy import render
from vfrac.synth.lesions import DESTRUCTION_MARGIN_MM, with_margin
from vfrac.synth.params import LEVELS, READER_ACCURACY, Site, draw_lesion, draw_scan, reader_calls
from vfrac.synth.preview import render_preview
from vfrac.synth.writer import ct_affine


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 patients at a small matrix, difficulty 1 so that every feature shows up."""
    out = tmp_path_factory.mktemp("synth") / "cohort"
    return generate_cohort(out, 12, seed=3, difficulty=1.0, matrix=160)


def test_same_seed_same_bytes_other_seed_other_pixels(tmp_path):
    first = generate_cohort(tmp_path / "a", 2, seed=7, matrix=64)
    second = generate_cohort(tmp_path / "b", 2, seed=7, matrix=64)
    other = generate_cohort(tmp_path / "c", 2, seed=8, matrix=64)
    assert first.read_text() == second.read_text()
    files = sorted(p.relative_to(first.parent) for p in first.parent.rglob("*.dcm"))
    assert files and files == sorted(p.relative_to(second.parent) for p in second.parent.rglob("*.dcm"))
    for name in files:
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes()
    a = load_volume(first.parent / "VF0001" / "ct").hu
    c = load_volume(other.parent / "VF0001" / "ct").hu
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_manifest_is_valid_and_series_load_to_the_written_geometry(cohort):
    patients = read_manifest(cohort).patients
    assert len(patients) == 12
    assert sum(p.is_malignant for p in patients) == round(12 * 0.68)
    for index, patient in enumerate(patients[:4]):
        scan = draw_scan(np.random.default_rng([3, index + 1, 1]), matrix=160)
        volume = load_volume(patient.ct)
        assert volume.shape == (scan.n_slices, 160, 160)
        assert np.allclose(volume.affine, ct_affine(scan), atol=1e-3)
        assert set(patient.features) == set(FEATURES) and set(patient.masks) == set(FEATURES)
        assert set(patient.readers) == {name.removeprefix("reader_") for name in READER_ACCURACY}


def test_dicom_headers_look_like_a_scanner_and_carry_fake_identity(cohort):
    patients = read_manifest(cohort).patients
    representations = set()
    for patient in patients:
        ds = pydicom.dcmread(next(patient.ct.iterdir()))
        assert ds.Modality == "CT" and ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)
        assert "^" in str(ds.PatientName) and str(ds.PatientID).startswith("H")
        assert patient.patient_id not in (str(ds.PatientID), str(ds.PatientName))
        assert ds.StudyDescription and ds.SeriesDescription and ds.SeriesInstanceUID
        representations.add(ds.PixelRepresentation)
    assert representations == {0, 1}  # stored unsigned and signed both occur


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_every_series_validates_with_dciodvfy(cohort):
    """dicom3tools' checker of the CT Image IOD: no errors, on signed and unsigned storage alike."""
    for patient in read_manifest(cohort).patients:
        first = min(patient.ct.iterdir())
        checked = subprocess.run(["dciodvfy", str(first)], capture_output=True, text=True, timeout=60)
        output = checked.stdout + checked.stderr
        assert "CTImage" in output and not [line for line in output.splitlines() if line.startswith("Error")], output


def test_tissues_have_their_hounsfield_values():
    scan = draw_scan(np.random.default_rng(11))
    hu = render(scan, draw_lesion(np.random.default_rng(12), "benign", 0.0), np.random.default_rng(13)).hu

    def at(z_mm, x_mm, y_mm):
        n, p = scan.matrix, scan.pixel_spacing
        k = int(round((z_mm - scan.z_start) / scan.slice_spacing))
        row, col = (int(round(c / p + (n - 1) / 2)) for c in (y_mm, x_mm))
        return float(np.median(hu[k, row - 1:row + 2, col - 1:col + 2]))

    neighbour = next(z for level, z in scan.level_z.items() if level != scan.target and abs(z) < 45)
    sx, sy, d = scan.spine_x, scan.spine_y, scan.body_half_depth
    disc_z = neighbour / 2  # half-way between the target and its neighbour
    back = sy + d + 2 * scan.canal_radius + 40 + scan.fat_thickness
    assert 100 < at(neighbour, sx, sy) < 380  # cancellous bone
    assert 40 < at(disc_z, sx, sy) < 130  # intervertebral disc
    assert at(neighbour, sx, sy + d + scan.canal_radius + 1.5) < 60  # spinal canal
    assert -160 < at(neighbour, sx, back - 2 - scan.fat_thickness / 2) < -40  # subcutaneous fat
    corner = -(scan.matrix - 1) / 2 * scan.pixel_spacing + scan.pixel_spacing
    assert at(neighbour, corner, corner) < -900  # air in the corner of the field of view
    rim = hu[:, :, int(round(sx / scan.pixel_spacing + (scan.matrix - 1) / 2))]
    assert rim.max() > 450  # a dense cortical shell exists


def test_feature_masks_lie_where_the_feature_was_drawn(cohort):
    seen = set()
    for patient in read_manifest(cohort).patients:
        volume = load_volume(patient.ct)
        roi = load_mask(patient.roi, volume) > 0
        near_roi = ndimage.binary_dilation(roi, iterations=2)
        for name in FEATURES:
            mask = load_mask(patient.masks[name], volume) > 0
            assert mask.any() == bool(patient.features[name]), (patient.patient_id, name)
            if not mask.any():
                continue
            seen.add(name)
            if name == "soft_tissue_mass":
                assert not (mask & roi).any()  # outside the cortex
                assert (mask & near_roi).any()  # but against the vertebra
            else:
                assert (mask & ~near_roi).sum() <= 0.02 * mask.sum(), (patient.patient_id, name)
    assert seen == set(FEATURES)


@pytest.mark.slow
def test_no_shortcut_separates_the_classes(tmp_path):
    """On 120 patients, nothing but the lesion tells benign from malignant (AUC < 0.7, over 3.5 standard errors
    of a null AUC at this size)."""
    manifest = generate_cohort(tmp_path / "cohort", 120, seed=21, matrix=128, workers=2)
    with open(manifest) as handle:
        levels = {row["patient_id"]: row["vertebra"] for row in csv.DictReader(handle)}
    rows = []
    for patient in read_manifest(manifest).patients:
        files = sorted(patient.ct.iterdir())
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        volume = load_volume(patient.ct)
        roi = load_mask(patient.roi, volume) > 0
        middle = volume.hu[len(volume.hu) // 2]
        rows.append({
            "malignant": patient.is_malignant,
            "slice count": len(files),
            "slice spacing": volume.spacing[0],
            "pixel spacing": volume.spacing[1],
            "field of view": volume.spacing[1] * header.Columns,
            "noise": float(np.std(np.diff(volume.hu[:, :4, :], axis=2))),  # air above the patient
            "vertebral level": LEVELS.index(levels[patient.patient_id]),
            "body size": float((middle > -500).sum()),
            "file size": sum(f.stat().st_size for f in files),
            "slice thickness": float(header.SliceThickness),
            "kVp": float(header.KVP),
            "pixel representation": header.PixelRepresentation,
            "table position": float(volume.affine[2, 3]),
            "mean HU in ROI": float(volume.hu[roi].mean()),
        })
    labels = np.array([r.pop("malignant") for r in rows])
    assert 0.6 < labels.mean() < 0.75
    for name in rows[0]:
        values = np.array([r[name] for r in rows], float)
        auc = roc_auc_score(labels, values) if values.std() > 0 else 0.5
        assert max(auc, 1 - auc) < 0.7, f"{name} separates the classes: AUC {auc:.2f}"


def test_readers_match_the_study_accuracy_and_err_on_hard_cases():
    rng = np.random.default_rng(0)
    labels = list(rng.choice(["benign", "malignant"], 20000))
    hardness = rng.uniform(0, 1, 20000)
    calls = reader_calls(np.random.default_rng(1), labels, hardness)
    for reader, accuracy in READER_ACCURACY.items():
        wrong = np.array(calls[reader]) != np.array(labels)
        assert abs((1 - wrong.mean()) - accuracy) < 0.006, reader
        assert hardness[wrong].mean() > hardness.mean() + 0.1  # errors fall on hard cases


def test_preview_renders_each_class(cohort, tmp_path):
    image = render_preview(cohort, per_class=2)
    assert image.ndim == 3 and image.shape[1] == 3 * 256 and image.shape[0] > 4 * 256
    assert image.std() > 20  # not a blank page


def test_command_refuses_to_overwrite_and_reports(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["--out", str(out), "--patients", "2", "--matrix", "64", "--workers", "1"]) == 0
    assert "wrote 2 synthetic patients" in capsys.readouterr().out
    before = (out / "manifest.csv").stat().st_mtime_ns
    assert main(["--out", str(out), "--patients", "2", "--matrix", "64", "--workers", "1"]) == 0
    assert (out / "manifest.csv").stat().st_mtime_ns == before  # the same cohort: nothing done
    assert main(["--out", str(out), "--patients", "3", "--matrix", "64", "--workers", "1"]) == 2
    assert "holds no cohort made with these settings" in capsys.readouterr().err
    assert main(["--out", str(out), "--patients", "3", "--matrix", "64", "--workers", "1", "--overwrite"]) == 0
    assert len(read_manifest(out / "manifest.csv").patients) == 3
    assert main(["--out", str(out), "--patients", "0"]) == 2
    assert not list(tmp_path.glob(".cohort.*"))  # no staging folder left behind


def test_demo_flag_takes_the_demos_settings_and_refuses_others(capsys):
    from vfrac.synth import DEMO
    from vfrac.synth.__main__ import parse_args

    args = parse_args(["--demo", "--out", "x", "--seed", "5"])
    assert args.settings == DEMO and args.seed == 5
    assert DEMO == {"patients": 120, "malignant_fraction": 0.68, "difficulty": 0.3, "matrix": 256}
    assert parse_args(["--out", "x", "--matrix", "64"]).settings == {"matrix": 64}
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--demo", "--out", "x", "--matrix", "64"])
    assert stopped.value.code == 2 and "drop --matrix" in capsys.readouterr().err
    # the site options are allowed with --demo, as its help says
    shifted = parse_args(["--demo", "--out", "x", "--noise-scale", "3", "--slice-thickness", "5",
                          "--hu-offset", "100"])
    assert shifted.settings == DEMO and (shifted.noise_scale, shifted.slice_thickness, shifted.hu_offset) == (3, 5, 100)
    assert "the site options below may be given with it" in " ".join(_help(capsys).split())


def _help(capsys) -> str:
    from vfrac.synth.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    return capsys.readouterr().out


def test_demo_without_out_writes_the_cv_demos_folder_and_nothing_else_does(tmp_path, monkeypatch, capsys):
    from experiments.config import DEMO_COHORT
    from vfrac.synth import generate
    from vfrac.synth.__main__ import parse_args

    assert generate.DEMO_FOLDER / "manifest.csv" == DEMO_COHORT and generate.DEMO_SEED == 0  # what the CV reads
    args = parse_args(["--demo"])
    assert args.out == Path("data/demo") and args.seed == 0 and args.settings == DEMO_SETTINGS
    assert parse_args(["--demo", "--seed", "0", "--workers", "1", "--overwrite"]).out == Path("data/demo")
    refusals = {  # argv -> what the error names
        (): "--out is required",
        ("--patients", "2"): "--out is required",
        ("--demo", "--seed", "5"): "with --seed 5, give --out DIR",
        ("--demo", "--hu-offset", "100"): "with --hu-offset, give --out DIR",
        ("--demo", "--slice-thickness", "5", "--noise-scale", "2"): "with --noise-scale, --slice-thickness, give",
        ("--out", "x", "--workers", "0"): "--workers must be 1 or more",
    }
    for argv, message in refusals.items():
        with pytest.raises(SystemExit) as stopped:
            parse_args(list(argv))
        assert stopped.value.code == 2 and message in capsys.readouterr().err, argv
    # the command itself, run from a folder as a user would: data/demo/ relative to it
    calls = []
    monkeypatch.setattr("vfrac.synth.__main__.generate_cohort",
                        lambda out, **kwargs: calls.append((out, kwargs)) or out / "manifest.csv")
    monkeypatch.chdir(tmp_path)
    assert main(["--demo", "--workers", "1"]) == 0
    (out, kwargs), = calls
    assert out == Path("data/demo") and kwargs["seed"] == 0 and kwargs["matrix"] == 256 and kwargs["patients"] == 120
    help_text = " ".join(_help(capsys).split())
    assert "required unless --demo (default then: data/demo)" in help_text


def test_bad_settings_are_errors_not_tracebacks(tmp_path, capsys):
    for matrix in ("0", "8", "-5", "100000"):
        assert main(["--out", str(tmp_path / "m"), "--patients", "1", "--matrix", matrix, "--workers", "1"]) == 2
        assert f"matrix must be 16 to 1024 pixels, received {matrix}" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_the_destruction_mask_takes_in_the_bone_at_its_edge_only():
    destroyed = np.zeros((20, 20), bool)
    destroyed[8:12, 0:6] = True  # a destroyed pedicle's gap, 0.5 mm pixels
    bone = np.zeros((20, 20), bool)
    bone[8:12, 6:20] = True  # the bone it broke off from, in line with it
    bone[0:3, 0:3] = True  # bone far away
    marked = with_margin(destroyed, bone, pixel_mm=0.5)
    assert DESTRUCTION_MARGIN_MM == 1.5  # 3 pixels here
    assert marked[8:12, 0:9].all() and not marked[8:12, 9:].any()  # 3 pixels of the stump, no more
    assert not marked[0:3, 0:3].any() and not marked[12:, :].any()  # neither far bone nor soft tissue
    assert not with_margin(np.zeros((4, 4), bool), np.ones((4, 4), bool), 0.5).any()


def test_another_sites_scanner_shifts_noise_slices_and_calibration_of_the_same_patients(tmp_path, capsys):
    base = generate_cohort(tmp_path / "base", 1, seed=4, matrix=64)
    assert main(["--out", str(tmp_path / "offset"), "--patients", "1", "--matrix", "64", "--seed", "4",
                 "--workers", "1", "--hu-offset", "40"]) == 0
    before, after = (load_volume(folder / "VF0001" / "ct").hu for folder in (base.parent, tmp_path / "offset"))
    difference = after - before
    unclipped = (before > -1024) & (after < 3071)  # the stored range clips air at -1024
    assert np.all(difference[unclipped] == 40) and unclipped.mean() > 0.8
    assert read_manifest(tmp_path / "offset" / "manifest.csv").patients[0].label == \
        read_manifest(base).patients[0].label  # the same patient, scanned elsewhere
    scan = draw_scan(np.random.default_rng([4, 1, 1]), matrix=64)
    thin = Site(slice_thickness=1.0).apply(scan)
    assert thin.slice_spacing == thin.slice_thickness == 1.0
    assert (thin.n_slices - 1) * 1.0 == pytest.approx((scan.n_slices - 1) * scan.slice_spacing, abs=0.5)
    generate_cohort(tmp_path / "thin", 1, seed=4, matrix=64, site=Site(slice_thickness=1.0))
    thin_ct = load_volume(tmp_path / "thin" / "VF0001" / "ct")
    assert thin_ct.spacing[0] == pytest.approx(1.0) and len(thin_ct.hu) == thin.n_slices
    header = pydicom.dcmread(next((tmp_path / "thin" / "VF0001" / "ct").glob("*.dcm")), stop_before_pixels=True)
    assert float(header.SliceThickness) == 1.0
    # Noise: the same draws, scaled, so the images' differences from scale 1 grow as scale - 1
    lesion = draw_lesion(np.random.default_rng([4, 1, 2]), "malignant", 0.3)
    images = [render(Site(noise_scale=k).apply(scan), lesion, np.random.default_rng([4, 1, 3])).hu.astype(float)
              for k in (1.0, 2.0, 3.0)]
    inside = (images[0] > -900) & (images[1] > -900) & (images[2] > -900)
    ratio = np.std((images[2] - images[0])[inside]) / np.std((images[1] - images[0])[inside])
    assert ratio == pytest.approx(2.0, rel=0.05)
    assert main(["--out", str(tmp_path / "bad"), "--patients", "1", "--noise-scale", "-1"]) == 2
    assert "noise scale must be in [0, 10]" in capsys.readouterr().err
