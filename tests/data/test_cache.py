"""The prepared cache: right crops, built once, atomic, keyed on everything that matters."""

import errno
import os
import time

import numpy as np
import pytest

import vfrac.data.cache as cache
from tests.dicom_factory import write_series
from vfrac.cohort import read_manifest
from vfrac.data.cache import CropSettings, cached_entry, prepare_cohort, read_entry
from vfrac.data.crops import crop_stack, roi_boxes
from vfrac.errors import InputError
from vfrac.io.volume import load_volume
from vfrac.prepare import main

SHAPE = (7, 24, 32)


def make_cohort(folder, broken=False):
    """Two patients written as DICOM series with .npy ROIs; optionally a third, broken."""
    rng = np.random.default_rng(11)
    rows = ["patient_id,label,ct,roi"]
    for number, label in ((1, "benign"), (2, "malignant")):
        pid = f"P{number:03d}"
        write_series(folder / pid / "ct", rng.integers(0, 2500, SHAPE, dtype=np.int16))
        roi = np.zeros(SHAPE, np.uint8)
        roi[2:5, 6 + number:14, 8:20 + number] = 1
        np.save(folder / pid / "roi.npy", roi)
        rows.append(f"{pid},{label},{pid}/ct,{pid}/roi.npy")
    if broken:
        (folder / "P003" / "ct").mkdir(parents=True)
        (folder / "P003" / "ct" / "IM1.dcm").write_text("not dicom")
        np.save(folder / "P003" / "roi.npy", np.ones(SHAPE, np.uint8))
        rows.append("P003,benign,P003/ct,P003/roi.npy")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.fixture
def manifest(tmp_path):
    return make_cohort(tmp_path / "cohort")


def test_entry_holds_the_roi_slices_boxes_and_exact_hu(tmp_path, manifest):
    (patient, _) = read_manifest(manifest).patients
    settings = CropSettings(margin=0.0, context=0.0, cache_size=13)  # P001: 7 x 13 ROI -> 13 px, no resampling
    result = prepare_cohort([patient], settings, tmp_path / "cache")
    entry = read_entry(result.entries["P001"])
    volume = load_volume(patient.ct)
    roi = np.load(patient.roi).astype(bool)
    assert entry.patient_id == "P001" and entry.crops.dtype == np.int16
    assert entry.crops.shape == (3, 13, 13, 3)
    assert entry.slices.tolist() == [2, 3, 4]
    assert entry.spacing.tolist() == pytest.approx([2.0, 0.5, 0.5])
    for crop, box in zip(entry.crops, roi_boxes(roi, margin=0.0), strict=True):
        assert np.array_equal(crop, crop_stack(volume.hu, box))
    assert entry.boxes.tolist() == [[4, 8, 13]] * 3  # rows 7..13 centred in 4..16


def test_crops_are_resampled_to_the_cache_size_with_context(tmp_path, manifest):
    result = prepare_cohort(read_manifest(manifest).patients, CropSettings(cache_size=32), tmp_path / "cache")
    entry = read_entry(result.entries["P002"])
    assert entry.crops.shape == (3, 32, 32, 3) and entry.context == 0.2
    assert (result.built, result.reused) == (2, 0)


def test_second_run_does_no_work(tmp_path, manifest, monkeypatch):
    patients = read_manifest(manifest).patients
    first = prepare_cohort(patients, CropSettings(), tmp_path / "cache")

    def fail(*args):
        raise AssertionError("work was done on a second run")

    monkeypatch.setattr(cache, "build_entry", fail)
    monkeypatch.setattr(cache, "_content_key", fail)  # not even the CT files are read
    second = prepare_cohort(patients, CropSettings(), tmp_path / "cache")
    assert second.entries == first.entries and (second.built, second.reused) == (0, 2)


def test_a_reader_finds_the_entry_of_its_settings_and_never_builds_one(tmp_path, manifest, monkeypatch):
    patients = read_manifest(manifest).patients
    built = prepare_cohort(patients, CropSettings(margin=0.2), tmp_path / "cache").entries
    monkeypatch.setattr(cache, "build_entry", lambda *args: pytest.fail("a reader built an entry"))
    assert cached_entry(patients[0], CropSettings(margin=0.2), tmp_path / "cache") == built["P001"]
    with pytest.raises(InputError, match="patient P001: no cache entry .* for the run's crop settings"):
        cached_entry(patients[0], CropSettings(margin=0.1), tmp_path / "cache")  # other settings: another key
    built["P002"].unlink()
    with pytest.raises(InputError, match="patient P002: no cache entry"):
        cached_entry(patients[1], CropSettings(margin=0.2), tmp_path / "cache")


def test_interrupted_write_leaves_no_entry(tmp_path, manifest, monkeypatch):
    patients = read_manifest(manifest).patients[:1]
    real_savez = np.savez

    def crash(handle, **fields):
        handle.write(b"PK\x03\x04 half an entry")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_cohort(patients, CropSettings(), tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.npz")) == []
    assert list((tmp_path / "cache").glob(".*")) == []  # no temporary file left
    monkeypatch.setattr(np, "savez", real_savez)
    assert prepare_cohort(patients, CropSettings(), tmp_path / "cache").built == 1


def test_changed_setting_or_roi_gives_a_new_entry_and_label_does_not(tmp_path, manifest):
    cohort = read_manifest(manifest)
    base = prepare_cohort(cohort.patients, CropSettings(), tmp_path / "cache").entries["P001"]
    margin = prepare_cohort(cohort.patients, CropSettings(margin=0.2), tmp_path / "cache").entries["P001"]
    assert margin != base
    roi = np.load(cohort.patients[0].roi)
    roi[5, 10, 10] = 1
    np.save(cohort.patients[0].roi, roi)
    changed = prepare_cohort(cohort.patients, CropSettings(), tmp_path / "cache")
    assert changed.entries["P001"] not in (base, margin) and changed.built == 1
    entry = read_entry(changed.entries["P001"])  # one voxel on slice 5: under the slice rule's 35 %
    assert entry.slices.tolist() == [2, 3, 4] and entry.dropped.tolist() == [5]
    every = read_entry(prepare_cohort(cohort.patients, CropSettings(min_area=0.0), tmp_path / "cache").entries["P001"])
    assert every.slices.tolist() == [2, 3, 4, 5] and every.dropped.size == 0
    manifest.write_text(manifest.read_text().replace("P002,malignant", "P002,benign"))
    relabelled = prepare_cohort(read_manifest(manifest).patients, CropSettings(), tmp_path / "cache")
    assert relabelled.built == 0


def test_bad_patient_stops_the_run_or_is_recorded(tmp_path):
    manifest = make_cohort(tmp_path / "cohort", broken=True)
    patients = read_manifest(manifest).patients
    with pytest.raises(InputError, match=r"patient P003: .*no CT image among 1 file"):
        prepare_cohort(patients, CropSettings(), tmp_path / "cache")
    result = prepare_cohort(patients, CropSettings(), tmp_path / "cache", skip_bad=True)
    assert sorted(result.entries) == ["P001", "P002"]
    assert list(result.failures) == ["P003"] and "not a DICOM file" in result.failures["P003"]


def test_multilabel_roi_needs_a_roi_label(tmp_path, manifest):
    patient = read_manifest(manifest).patients[0]
    roi = np.load(patient.roi)
    roi[roi > 0] = 2
    roi[5, 5, 5] = 9
    np.save(patient.roi, roi)
    with pytest.raises(InputError, match=r"several labels \(2, 9\); say which with a roi_label column"):
        prepare_cohort([patient], CropSettings(), tmp_path / "cache")
    manifest.write_text(manifest.read_text().replace("patient_id,label,ct,roi", "patient_id,label,ct,roi,roi_label")
                        .replace("P001/roi.npy", "P001/roi.npy,2").replace("P002/roi.npy", "P002/roi.npy,7"))
    first, second = read_manifest(manifest).patients
    entry = read_entry(prepare_cohort([first], CropSettings(), tmp_path / "cache").entries["P001"])
    assert entry.slices.tolist() == [2, 3, 4]
    with pytest.raises(InputError, match="has no voxel with label 7"):
        prepare_cohort([second], CropSettings(), tmp_path / "cache")


def test_parallel_workers_give_the_same_entries(tmp_path, manifest):
    patients = read_manifest(manifest).patients
    serial = prepare_cohort(patients, CropSettings(), tmp_path / "serial", workers=1)
    parallel = prepare_cohort(patients, CropSettings(), tmp_path / "parallel", workers=2)
    for pid, path in serial.entries.items():
        assert parallel.entries[pid].name == path.name
        assert np.array_equal(read_entry(parallel.entries[pid]).crops, read_entry(path).crops)


def test_command_prepares_reports_and_fails_clearly(tmp_path, capsys):
    manifest = make_cohort(tmp_path / "cohort", broken=True)
    cache_dir = tmp_path / "cache"
    assert main(["--cohort", str(manifest), "--cache-dir", str(cache_dir), "--workers", "1"]) == 2
    assert "error: patient P003" in capsys.readouterr().err
    assert main(["--cohort", str(manifest), "--cache-dir", str(cache_dir), "--workers", "1", "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "prepared 2 patient(s), 6 crops" in captured.out
    report = (cache_dir / "prepare_report.csv").read_text().splitlines()
    assert report[0] == "patient_id,reason" and report[1].startswith("P003,")
    assert "kept 6 of 6 ROI slices; 0 of 2 patient(s) lost slices" in captured.out
    roi = np.load(tmp_path / "cohort" / "P001" / "roi.npy")
    roi[5, 7, 9] = roi[1, 7, 9] = 1  # a voxel above and below the 3-slice ROI
    np.save(tmp_path / "cohort" / "P001" / "roi.npy", roi)
    assert main(["--cohort", str(manifest), "--cache-dir", str(cache_dir), "--workers", "1", "--skip-bad"]) == 0
    assert "kept 6 of 8 ROI slices; 1 of 2 patient(s) lost slices, 2-2 each (median 2)" in capsys.readouterr().out
    rows = (cache_dir / "slice_report.csv").read_text().splitlines()
    assert rows[:2] == ["patient_id,kept,dropped,reason",
                        "P001,3,2,ROI area under 35% of the patient's largest ROI slice"]
    assert rows[2] == "P002,3,0,"
    assert main(["--cohort", str(manifest), "--cache-dir", str(cache_dir), "--workers", "1", "--skip-bad",
                 "--min-area", "0"]) == 0
    assert "kept 8 of 8 ROI slices" in capsys.readouterr().out
    manifest.write_text("".join(line for line in manifest.read_text().splitlines(keepends=True)
                                if not line.startswith("P003,")))  # the broken patient taken out
    assert main(["--cohort", str(manifest), "--cache-dir", str(cache_dir), "--workers", "1"]) == 0
    assert not (cache_dir / "prepare_report.csv").exists()  # the earlier run's list is not left to mislead
    assert main(["--cohort", str(manifest), "--cache-dir", str(cache_dir), "--min-area", "2"]) == 2
    assert "min_area must be in [0, 1]" in capsys.readouterr().err
    assert main(["--cohort", str(tmp_path / "none.csv"), "--cache-dir", str(cache_dir)]) == 2
    assert "manifest not found" in capsys.readouterr().err


def test_read_only_cache_folder_stops_the_run_up_front(tmp_path, manifest):
    patients = read_manifest(manifest).patients
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: chmod does not make a folder read-only")
        with pytest.raises(InputError, match=f"cache folder {locked} is not writable: Permission denied"):
            prepare_cohort(patients, CropSettings(), locked, workers=2)
    finally:
        locked.chmod(0o755)


def test_unwritable_cache_folder_is_named_even_as_root(tmp_path, manifest, monkeypatch):
    patients = read_manifest(manifest).patients
    (tmp_path / "a-file").write_text("")
    with pytest.raises(InputError, match=f"cache folder {tmp_path / 'a-file'} is not writable: File exists"):
        prepare_cohort(patients, CropSettings(), tmp_path / "a-file")

    def refuse(dir):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)

    monkeypatch.setattr(cache.tempfile, "TemporaryFile", refuse)  # what a read-only folder answers
    with pytest.raises(InputError, match=f"cache folder {tmp_path / 'cache'} is not writable: Permission denied"):
        prepare_cohort(patients, CropSettings(), tmp_path / "cache")


def test_command_names_an_unwritable_cache_folder(tmp_path, manifest, capsys):
    (tmp_path / "a-file").write_text("")
    assert main(["--cohort", str(manifest), "--cache-dir", str(tmp_path / "a-file"), "--workers", "1"]) == 2
    assert f"error: cache folder {tmp_path / 'a-file'} is not writable" in capsys.readouterr().err


def test_stale_temporary_files_of_a_killed_write_are_removed(tmp_path, manifest):
    cache_dir = tmp_path / "cache"
    (cache_dir / "keys").mkdir(parents=True)
    stale = [cache_dir / ".P001-0123456789abcdef01234567.npz.k3x_9q2a.tmp",
             cache_dir / "keys" / ".P001-0123456789abcdef01234567.x7y8z9w0.tmp"]
    not_ours = [cache_dir / "notes.tmp", cache_dir / ".notes.tmp", cache_dir / "keys" / "P001.tmp"]
    old = time.time() - 2 * cache.STALE_AFTER_S
    for path in stale + not_ours:
        path.write_bytes(b"PK\x03\x04 half an entry")
        os.utime(path, (old, old))
    live = cache_dir / ".P002-0123456789abcdef01234567.npz.a1b2c3d4.tmp"  # recent: a live writer's
    live.write_bytes(b"PK\x03\x04 half an entry")
    result = prepare_cohort(read_manifest(manifest).patients, CropSettings(), cache_dir)
    assert result.built == 2
    assert [p.exists() for p in stale] == [False, False] and all(p.exists() for p in [live, *not_ours])


def test_command_refuses_paths_outside_the_cohort_unless_allowed(tmp_path, manifest, capsys):
    elsewhere = tmp_path / "elsewhere" / "manifest.csv"
    elsewhere.parent.mkdir()
    elsewhere.write_text(manifest.read_text().replace(",P00", ",../cohort/P00"))
    command = ["--cohort", str(elsewhere), "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "error: 4 problem(s)" in err and "row 1 (patient_id P001), column ct: ../cohort/P001/ct resolves" in err
    assert "Traceback" not in err and not (tmp_path / "cache").exists()  # refused before any file was read
    assert main([*command, "--allow-outside"]) == 0
    assert "prepared 2 patient(s), 6 crops" in capsys.readouterr().out
