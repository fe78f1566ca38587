"""`python -m vfrac.cohort import`: manifests whose ROI is exactly the labelled level, and every refusal."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vfrac.cohort import read_manifest
from vfrac.cohort.__main__ import main
from vfrac.data.cache import roi_voxels
from vfrac.errors import InputError
from vfrac.io.vertebrae import TOTALSEGMENTATOR, VERSE, totalsegmentator_roi, verse_roi
from vfrac.io.volume import load_mask, load_volume

REAL = Path(__file__).resolve().parents[2] / "examples" / "real-ct"
CT, MAP, BODIES = (REAL / f"abdomen-pelvis-{name}.nii.gz" for name in ("ct", "vertebrae", "vertebral-bodies"))
VERSE_SHAPE = (6, 5, 9)  # x, y, z: three vertebrae of three slices each


@pytest.fixture(scope="module")
def vertebra_map():
    """The real map's labels (file order) and affine, for golden counts and per-structure masks."""
    image = nib.load(MAP)
    return np.asarray(image.dataobj), image.affine


@pytest.fixture
def ts_dir(tmp_path, vertebra_map):
    """`multi/`: CT + TotalSegmentator's multi-label map; `split/`: CT + per-structure masks (T4 empty)."""
    labels, affine = vertebra_map
    folder = tmp_path / "ts"
    for pid in ("multi", "split"):
        (folder / pid).mkdir(parents=True)
        shutil.copy(CT, folder / pid / "ct.nii.gz")
    shutil.copy(MAP, folder / "multi" / "segmentations.nii.gz")
    masks = folder / "split" / "segmentations"
    masks.mkdir()
    for level in ("T4", "T12", "L1"):
        mask = (labels == TOTALSEGMENTATOR.id(level)).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, affine), masks / f"vertebrae_{level}.nii.gz")
    return folder


def verse_mask(levels) -> np.ndarray:
    """T12, L1, L2 (VerSe 19, 20, 21) stacked along z, keeping only `levels`."""
    mask = np.zeros(VERSE_SHAPE, np.uint8)
    for index, label in enumerate((19, 20, 21)):
        if label in levels:
            mask[1:5, 1 + index % 2:4, 3 * index:3 * index + 3] = label
    return mask


@pytest.fixture
def verse_dir(tmp_path):
    """verse001 with centroids of T12-L2, verse002 (T12, L1) without, verse003 never labelled."""
    folder, affine = tmp_path / "verse", np.diag([1.5, 1.5, 3.0, 1.0])
    for subject, levels, centroids in (("verse001", (19, 20, 21), True), ("verse002", (19, 20), False),
                                       ("verse003", (19,), False)):
        raw, derived = folder / "rawdata" / f"sub-{subject}", folder / "derivatives" / f"sub-{subject}"
        raw.mkdir(parents=True)
        derived.mkdir(parents=True)
        mask = verse_mask(levels)
        nib.save(nib.Nifti1Image(np.where(mask > 0, 300, -1000).astype(np.int16), affine),
                 raw / f"sub-{subject}_ct.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), derived / f"sub-{subject}_seg-vert_msk.nii.gz")
        if centroids:
            points = [{"label": label, "X": 3.0, "Y": 2.5, "Z": 4.5} for label in levels]
            (derived / f"sub-{subject}_seg-subreg_ctd.json").write_text(json.dumps([{"direction": ["P", "I", "R"]},
                                                                                   *points]))
    return folder


def write_labels(folder: Path, *rows: str, header: str = "patient_id,label,vertebra") -> Path:
    path = folder / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def run_import(capsys, layout: str, folder: Path, labels: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["import", "--layout", layout, str(folder), "--labels", str(labels), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def roi_counts(manifest: Path, **options) -> dict[str, int]:
    """Per patient, the ROI voxels the manifest selects, read as vfrac.prepare reads them."""
    counts = {}
    for patient in read_manifest(manifest, **options).patients:
        counts[patient.patient_id] = int(roi_voxels(load_mask(patient.roi, load_volume(patient.ct)), patient).sum())
    return counts


# Level names


@pytest.mark.parametrize(("level", "total", "verse"), [
    ("L1", 31, 20), ("T12", 32, 19), ("C1", 50, 1), ("C7", 44, 7), ("T1", 43, 8), ("L5", 27, 24), (" l1 ", 31, 20),
    ("t12", 32, 19)])
def test_level_ids_of_both_schemes(level, total, verse):
    assert (TOTALSEGMENTATOR.id(level), VERSE.id(level)) == (total, verse)


def test_levels_only_one_scheme_has():
    assert TOTALSEGMENTATOR.id("S1") == 26 and VERSE.id("L6") == 25 and VERSE.id("T13") == 28
    assert TOTALSEGMENTATOR.describe() == "C1-C7, T1-T12, L1-L5, S1"
    assert VERSE.describe() == "C1-C7, T1-T13, L1-L6"


@pytest.mark.parametrize("name", ["L6", "T13", "L01", "L 1", "vertebrae_L1", "L", "", "X1", "L0"])
def test_other_level_names_are_refused_with_the_valid_ones(name):
    with pytest.raises(InputError, match=rf"{name!r} is not a vertebra level of TotalSegmentator's total task; "
                                         r"valid levels: C1-C7, T1-T12, L1-L5, S1"):
        TOTALSEGMENTATOR.level(name)


def test_verse_refuses_s1():
    with pytest.raises(InputError, match=r"'S1' is not a vertebra level of VerSe; valid levels: C1-C7, T1-T13, L1-L6"):
        VERSE.id("S1")


# totalsegmentator_roi


def test_a_multi_label_map_gives_itself_and_the_level_id():
    assert totalsegmentator_roi(MAP, " l1 ") == (MAP, 31)
    assert totalsegmentator_roi(MAP, "S1") == (MAP, 26)


def test_a_per_structure_folder_gives_the_level_file(ts_dir):
    masks = ts_dir / "split" / "segmentations"
    assert totalsegmentator_roi(masks, "t12") == (masks / "vertebrae_T12.nii.gz", None)


ROI_REFUSALS = [
    ("unknown level", "{map}", "L6", r"{map}: 'L6' is not a vertebra level of TotalSegmentator's total task; "
                                     r"valid levels: C1-C7, T1-T12, L1-L5, S1"),
    ("level not in the map", "{map}", "C1",
     r"{map}: no C1 \(label 50\) in this map; it holds T11, T12, L1, L2, L3, L4, L5, S1 "
     r"\(TotalSegmentator's total task ids 33, 32, 31, 30, 29, 28, 27, 26\)"),
    ("a map of other structures", "{bodies}", "L1",
     r"{bodies}: no L1 \(label 31\) in this map; it holds no vertebra of TotalSegmentator's total task "
     r"\(labels found: 1, 2\)"),
    ("no mask file", "{masks}", "L2", r"{masks}: no vertebrae_L2.nii.gz for L2; it holds masks of T4, T12, L1"),
    ("empty mask", "{masks}", "T4", r"{masks}/vertebrae_T4.nii.gz: the T4 mask is empty: TotalSegmentator found "
                                    r"no T4 in this CT"),
    ("not a TotalSegmentator folder", "{empty}", "L1",
     r"{empty}: no vertebrae_L1.nii.gz for L1; it holds no vertebrae_\*.nii.gz mask: is it the output folder"),
    ("missing", "{missing}", "L1", r"{missing}: no such file or folder"),
    ("not NIfTI", "{text}", "L1", r"{text}: a TotalSegmentator output is a folder of per-structure masks or a "
                                  r"\.nii/\.nii\.gz multi-label map"),
]


@pytest.mark.parametrize(("where", "level", "message"), [r[1:] for r in ROI_REFUSALS], ids=[r[0] for r in ROI_REFUSALS])
def test_totalsegmentator_roi_refusals_name_the_file_and_reason(ts_dir, where, level, message):
    (ts_dir / "empty").mkdir()
    (ts_dir / "notes.txt").write_text("L1")
    places = dict(map=MAP, bodies=BODIES, masks=ts_dir / "split" / "segmentations", empty=ts_dir / "empty",
                  missing=ts_dir / "nowhere.nii.gz", text=ts_dir / "notes.txt")
    escaped = {key: str(value).replace(".", r"\.") for key, value in places.items()}
    with pytest.raises(InputError, match=message.format(**escaped)):
        totalsegmentator_roi(Path(where.format(**places)), level)


# verse_roi


def test_verse_roi_reads_the_centroids_when_given_and_the_mask_otherwise(verse_dir):
    derived = verse_dir / "derivatives" / "sub-verse001"
    mask, centroids = derived / "sub-verse001_seg-vert_msk.nii.gz", derived / "sub-verse001_seg-subreg_ctd.json"
    assert verse_roi(mask, "L2", centroids) == verse_roi(mask, "l2") == 21
    centroids.write_text(json.dumps([{"direction": ["P", "I", "R"]}, {"label": 19, "X": 1, "Y": 1, "Z": 1}]))
    with pytest.raises(InputError, match=r"ctd\.json: no L1 \(label 20\) in this centroid file; it holds T12 "
                                         r"\(VerSe ids 19\)"):
        verse_roi(mask, "L1", centroids)  # the mask holds L1: the centroid file answered
    other = verse_dir / "derivatives" / "sub-verse002" / "sub-verse002_seg-vert_msk.nii.gz"
    with pytest.raises(InputError, match=r"msk\.nii\.gz: no L2 \(label 21\) in this mask; it holds T12, L1 "
                                         r"\(VerSe ids 19, 20\)"):
        verse_roi(other, "L2")
    centroids.write_text("{not json")
    with pytest.raises(InputError, match=r"ctd\.json: not a VerSe centroid file"):
        verse_roi(mask, "L1", centroids)


# The command, TotalSegmentator layout


def test_totalsegmentator_import_selects_exactly_the_labelled_level(ts_dir, vertebra_map, capsys):
    labels = write_labels(ts_dir.parent, "multi,benign, l1", "split,Malignant,T12")
    code, out, err = run_import(capsys, "totalsegmentator", ts_dir, labels)
    manifest = ts_dir / "manifest.csv"
    assert (code, out, err) == (0, f"wrote 2 patient(s) to {manifest}\n", "")
    assert manifest.read_text().splitlines() == [
        "patient_id,label,ct,roi,roi_label,vertebra",
        "multi,benign,multi/ct.nii.gz,multi/segmentations.nii.gz,31,L1",
        "split,malignant,split/ct.nii.gz,split/segmentations/vertebrae_T12.nii.gz,,T12"]
    golden = {pid: int(np.count_nonzero(vertebra_map[0] == value)) for pid, value in (("multi", 31), ("split", 32))}
    assert golden == {"multi": 2143, "split": 1773}
    assert roi_counts(manifest) == golden
    multi, split = read_manifest(manifest).patients
    assert (multi.vertebra, multi.roi_label, split.vertebra, split.roi_label) == ("L1", 31, "T12", None)
    volume = load_volume(multi.ct)  # the very voxels of the level, not only as many
    np.testing.assert_array_equal(roi_voxels(load_mask(multi.roi, volume), multi), load_mask(MAP, volume) == 31)


def test_a_manifest_elsewhere_gets_relative_paths_and_the_allow_outside_hint(ts_dir, capsys):
    labels = write_labels(ts_dir.parent, "multi,benign,L1")
    above = ts_dir.parent / "manifest.csv"
    assert run_import(capsys, "totalsegmentator", ts_dir, labels, "--out", str(above))[:2] == (
        0, f"wrote 1 patient(s) to {above}\n")
    assert "ts/multi/ct.nii.gz,ts/multi/segmentations.nii.gz,31" in above.read_text()
    beside = ts_dir.parent / "elsewhere" / "manifest.csv"
    code, out, _ = run_import(capsys, "totalsegmentator", ts_dir, labels, "--out", str(beside))
    assert code == 0 and "../ts/multi/ct.nii.gz" in beside.read_text()
    assert out.splitlines()[0] == (f"note: the manifest's paths lead outside {beside.parent}; read it with "
                                   f"--allow-outside (python -m vfrac.prepare --cohort {beside} --allow-outside)")
    with pytest.raises(InputError, match="outside the cohort folder"):
        read_manifest(beside)
    assert roi_counts(beside, allow_outside=True) == roi_counts(above) == {"multi": 2143}


def test_an_existing_manifest_is_replaced_only_with_force(ts_dir, capsys):
    labels = write_labels(ts_dir.parent, "multi,benign,L1")
    manifest = ts_dir / "manifest.csv"
    manifest.write_text("edited by hand\n")
    code, out, err = run_import(capsys, "totalsegmentator", ts_dir, labels)
    assert (code, out) == (2, "") and err == f"error: {manifest}: already exists; pass --force to replace it\n"
    assert manifest.read_text() == "edited by hand\n"
    assert run_import(capsys, "totalsegmentator", ts_dir, labels, "--force")[0] == 0
    assert read_manifest(manifest).patients[0].roi_label == 31
    assert sorted(p.name for p in ts_dir.iterdir()) == ["manifest.csv", "multi", "split"]  # no partial file left


TS_REFUSALS = [
    ("unknown level", ["multi,benign,L6"], r"row 1 \(patient_id multi\), column vertebra: 'L6' is not a vertebra "
                                          r"level of TotalSegmentator's total task; valid levels: C1-C7"),
    ("level not in the map", ["multi,benign,C1"],
     r"row 1 \(patient_id multi\): .*/multi/segmentations\.nii\.gz: no C1 \(label 50\) in this map; it holds T11, "
     r"T12, L1, L2, L3, L4, L5, S1"),
    ("no mask of the level", ["split,benign,L2"],
     r"row 1 \(patient_id split\): .*/split/segmentations: no vertebrae_L2\.nii\.gz for L2; it holds masks of T4"),
    ("empty mask", ["split,benign,T4"], r"row 1 \(patient_id split\): .*/vertebrae_T4\.nii\.gz: the T4 mask is empty"),
    ("no CT in DIR", ["ghost,benign,L1"], r"row 1 \(patient_id ghost\): .*/ts/ghost: no such folder; this layout "
                                          r"expects .*/ts/<patient_id>/ct\.nii\.gz"),
    ("bad label", ["multi,fracture,L1"], r"row 1 \(patient_id multi\), column label: 'fracture' is not one of benign, "
                                         r"malignant"),
    ("bad id", ["../multi,benign,L1"], r"row 1 \(patient_id \.\./multi\), column patient_id: '\.\./multi' is empty "
                                       r"or not a plain id"),
    ("duplicate id", ["multi,benign,L1", "multi,benign,L2"], r"row 2 \(patient_id multi\), column patient_id: "
                                                             r"'multi' already used in row 1"),
    ("missing column", ["patient_id,label", "multi,benign"],
     r"labels\.csv: missing required column\(s\) vertebra; found patient_id, label"),
    ("no rows", ["patient_id,label,vertebra"], r"labels\.csv: has a header but no patients"),
]


@pytest.mark.parametrize("case", [r[1:] for r in TS_REFUSALS], ids=[r[0] for r in TS_REFUSALS])
def test_totalsegmentator_import_refusals(ts_dir, capsys, case):
    rows, message = case
    header = {"header": rows[0]} if rows[0].startswith("patient_id") else {}  # a case with its own header
    labels = write_labels(ts_dir.parent, *rows[bool(header):], **header)
    code, out, err = run_import(capsys, "totalsegmentator", ts_dir, labels)
    assert (code, out) == (2, "") and err.startswith("error: ") and str(labels) in err
    assert re.search(message, err), err
    assert not (ts_dir / "manifest.csv").exists()


def test_every_problem_is_reported_at_once(ts_dir, capsys):
    (ts_dir / "both").mkdir()
    for name in ("ct.nii.gz", "segmentations.nii.gz"):
        (ts_dir / "both" / name).write_bytes(b"")
    (ts_dir / "both" / "ct").mkdir()
    (ts_dir / "bare").mkdir()
    (ts_dir / "bare" / "ct.nii.gz").write_bytes(b"")
    labels = write_labels(ts_dir.parent, "multi,benign,L1", "ghost,maybe,L1", "split,benign,S1", "both,benign,L1",
                          "bare,benign,L1")
    code, _, err = run_import(capsys, "totalsegmentator", ts_dir, labels)
    lines = err.splitlines()
    assert code == 2 and lines[0] == f"error: 5 problem(s) importing {ts_dir} with {labels}:"
    assert [line.split(": ", 1)[0] for line in lines[1:]] == [
        f"{labels}, row 2 (patient_id ghost), column label", f"{labels}, row 2 (patient_id ghost)",
        f"{labels}, row 3 (patient_id split)", f"{labels}, row 4 (patient_id both)",
        f"{labels}, row 5 (patient_id bare)"]
    assert lines[2].endswith("ghost: no such folder; this layout expects "
                             f"{ts_dir}/<patient_id>/ct.nii.gz and TotalSegmentator's output beside it")
    assert lines[3].endswith("segmentations: no vertebrae_S1.nii.gz for S1; it holds masks of T4, T12, L1")
    assert lines[4].endswith(f"{ts_dir / 'both'}: holds 2 CTs (ct.nii.gz, ct); keep one")
    assert lines[5].endswith(f"{ts_dir / 'bare'}: no TotalSegmentator output; expected a folder segmentations/ of "
                             "per-structure masks or a multi-label map segmentations.nii.gz")


def test_missing_inputs(ts_dir, capsys):
    labels = write_labels(ts_dir.parent, "multi,benign,L1")
    assert run_import(capsys, "totalsegmentator", ts_dir, ts_dir / "no.csv")[2] == (
        f"error: {ts_dir / 'no.csv'}: labels table not found\n")
    missing = ts_dir / "no"
    assert run_import(capsys, "totalsegmentator", missing, labels)[2] == f"error: {missing}: no such folder\n"
    assert run_import(capsys, "verse", ts_dir, labels)[2].startswith(
        f"error: {ts_dir}: no rawdata/ folder; a VerSe dataset holds rawdata/sub-<id>/<name>_ct.nii.gz")


# The command, VerSe layout


def test_verse_import_selects_exactly_the_labelled_level_and_warns_of_unlabelled_cts(verse_dir, capsys):
    labels = write_labels(verse_dir.parent, "verse001,malignant,L2", "verse002,benign,l1")
    code, out, err = run_import(capsys, "verse", verse_dir, labels)
    manifest = verse_dir / "manifest.csv"
    assert (code, out) == (0, f"wrote 2 patient(s) to {manifest}\n")
    assert err == f"warning: 1 CT(s) in {verse_dir} have no row in {labels} and were left out: verse003\n"
    assert manifest.read_text().splitlines()[1:] == [
        "verse001,malignant,rawdata/sub-verse001/sub-verse001_ct.nii.gz,"
        "derivatives/sub-verse001/sub-verse001_seg-vert_msk.nii.gz,21,L2",
        "verse002,benign,rawdata/sub-verse002/sub-verse002_ct.nii.gz,"
        "derivatives/sub-verse002/sub-verse002_seg-vert_msk.nii.gz,20,L1"]
    golden = {pid: int(np.count_nonzero(verse_mask((label,)))) for pid, label in (("verse001", 21), ("verse002", 20))}
    assert golden == {"verse001": 4 * 3 * 3, "verse002": 4 * 2 * 3}
    assert roi_counts(manifest) == golden


def test_verse_import_refusals(verse_dir, capsys):
    (verse_dir / "rawdata" / "sub-verse003" / "sub-verse003_split-2_ct.nii.gz").write_bytes(b"")
    (verse_dir / "rawdata" / "sub-verse004").mkdir()
    shutil.copy(verse_dir / "rawdata" / "sub-verse002" / "sub-verse002_ct.nii.gz",
                verse_dir / "rawdata" / "sub-verse004" / "sub-verse004_ct.nii.gz")
    labels = write_labels(verse_dir.parent, "verse001,benign,C1", "verse002,benign,L2", "verse003,benign,T12",
                          "verse004,benign,T12", "verse009,benign,L1", "verse001,benign,S1")
    code, _, err = run_import(capsys, "verse", verse_dir, labels)
    lines = err.splitlines()
    assert code == 2 and lines[0] == f"error: 7 problem(s) importing {verse_dir} with {labels}:"
    derived = verse_dir / "derivatives"
    assert lines[1:] == [
        f"{labels}, row 1 (patient_id verse001): {derived}/sub-verse001/sub-verse001_seg-subreg_ctd.json: no C1 "
        "(label 1) in this centroid file; it holds T12, L1, L2 (VerSe ids 19, 20, 21)",
        f"{labels}, row 2 (patient_id verse002): {derived}/sub-verse002/sub-verse002_seg-vert_msk.nii.gz: no L2 "
        "(label 21) in this mask; it holds T12, L1 (VerSe ids 19, 20)",
        f"{labels}, row 3 (patient_id verse003): {verse_dir}/rawdata/sub-verse003: expected one CT named "
        "<name>_ct.nii.gz; found sub-verse003_ct.nii.gz, sub-verse003_split-2_ct.nii.gz; keep one",
        f"{labels}, row 4 (patient_id verse004): {derived}/sub-verse004: no vertebra mask; expected "
        "sub-verse004_seg-vert_msk.nii.gz",
        f"{labels}, row 5 (patient_id verse009): {verse_dir}/rawdata/sub-verse009: expected one CT named "
        "<name>_ct.nii.gz; found none",
        f"{labels}, row 6 (patient_id verse001), column patient_id: 'verse001' already used in row 1",
        f"{labels}, row 6 (patient_id verse001), column vertebra: 'S1' is not a vertebra level of VerSe; valid "
        "levels: C1-C7, T1-T13, L1-L6"]
