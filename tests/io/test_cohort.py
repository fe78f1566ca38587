"""The manifest: good rows become patients; each bad row is named with its reason."""

import numpy as np
import pytest

from experiments.config import resolve
from experiments.cv import parse_args
from vfrac.cohort import read_manifest
from vfrac.errors import InputError

HEADER = "patient_id,label,ct,roi,roi_label,feature_soft_tissue_mass,mask_soft_tissue_mass,reader_r1"


@pytest.fixture
def cohort_dir(tmp_path):
    """A cohort folder; beside it `elsewhere/` holds a CT folder and a mask outside it, `link_out` leads there."""
    folder = tmp_path / "cohort"
    for pid in ("P001", "P002"):
        (folder / "ct" / pid).mkdir(parents=True)
        np.save(folder / f"{pid}_roi.npy", np.zeros((2, 2, 2), np.uint8))
    (tmp_path / "elsewhere" / "ct").mkdir(parents=True)
    np.save(tmp_path / "elsewhere" / "roi.npy", np.zeros((2, 2, 2), np.uint8))
    (folder / "link_out").symlink_to(tmp_path / "elsewhere" / "ct")
    return folder


def write(folder, *rows, header=HEADER):
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


GOOD = [
    "P001,benign,ct/P001,P001_roi.npy,,0,,malignant",
    "P002,Malignant,ct/P002,P002_roi.npy,32,1,P002_roi.npy,",
]


def test_good_manifest_gives_patients_with_resolved_paths(cohort_dir):
    cohort = read_manifest(write(cohort_dir, *GOOD))
    first, second = cohort.patients
    assert (first.patient_id, first.label, first.is_malignant) == ("P001", "benign", False)
    assert first.ct == cohort_dir / "ct" / "P001" and first.roi_label is None
    assert first.features == {"soft_tissue_mass": 0} and first.readers == {"r1": "malignant"}
    assert second.label == "malignant" and second.roi_label == 32
    assert second.masks == {"soft_tissue_mass": cohort_dir / "P002_roi.npy"} and second.readers == {}
    assert cohort.problems == []


BAD = [
    ("missing column", dict(header="patient_id,label,ct", rows=["P001,benign,ct/P001"]),
     r"missing required column\(s\) roi"),
    ("unknown label", dict(rows=["P001,fracture,ct/P001,P001_roi.npy,,,,"]),
     r"row 1 \(patient_id P001\), column label: 'fracture' is not one of benign, malignant"),
    ("duplicate id", dict(rows=[GOOD[0], "P001,benign,ct/P002,P002_roi.npy,,,,"]),
     r"row 2 \(patient_id P001\), column patient_id: 'P001' already used in row 1"),
    ("missing ct", dict(rows=["P003,benign,ct/P003,P001_roi.npy,,,,"]),
     r"row 1 \(patient_id P003\), column ct: ct/P003 does not exist"),
    ("missing roi", dict(rows=["P001,benign,ct/P001,nowhere.nii.gz,,,,"]),
     r"column roi: nowhere.nii.gz does not exist"),
    ("roi not a mask", dict(rows=["P001,benign,ct/P001,ct/P001,,,,"]),
     r"column roi: ct/P001 should be a .nii, .nii.gz, .nrrd \(.seg.nrrd\), .dcm \(DICOM SEG or RTSTRUCT\) "
     r"or .npy mask"),
    ("bad feature", dict(rows=["P001,benign,ct/P001,P001_roi.npy,,yes,,"]),
     r"column feature_soft_tissue_mass: 'yes' should be 0, 1 or empty"),
    ("bad reader", dict(rows=["P001,benign,ct/P001,P001_roi.npy,,,,maybe"]),
     r"column reader_r1: 'maybe' should be benign, malignant or empty"),
    ("bad roi label", dict(rows=["P001,benign,ct/P001,P001_roi.npy,T12,,,"]),
     r"column roi_label: 'T12' is not a whole number"),
    ("unsafe id", dict(rows=["../P001,benign,ct/P001,P001_roi.npy,,,,"]),
     r"column patient_id: '../P001' is empty or not a plain id"),
    ("no rows", dict(rows=[]), r"has a header but no patients"),
    ("extra field", dict(rows=[GOOD[0] + ",P002_roi.npy"]),
     r"row 1 \(patient_id P001\): 9 fields, the header has 8"),
    ("duplicated column",
     dict(header="patient_id,label,ct,roi,label,ct", rows=["P001,benign,ct/P001,P001_roi.npy,x,y"]),
     r"column\(s\) ct, label appear more than once in the header"),
    ("unicode digit roi label", dict(rows=["P001,benign,ct/P001,P001_roi.npy,\u00b2,,,"]),
     r"row 1 \(patient_id P001\), column roi_label: '\u00b2' is not a whole number"),
    ("background roi label", dict(rows=["P001,benign,ct/P001,P001_roi.npy,0,,,"]),
     r"column roi_label: '0' is not a whole number from 1"),
    ("ct leaves the folder", dict(rows=["P001,benign,../elsewhere/ct,P001_roi.npy,,,,"]),
     r"row 1 \(patient_id P001\), column ct: \.\./elsewhere/ct resolves to .*/elsewhere/ct, outside the "
     r"cohort folder .*/cohort; paths must stay inside it unless --allow-outside is given"),
    ("far above the folder", dict(rows=["P001,benign," + "../" * 40 + "etc,P001_roi.npy,,,,"]),
     r"column ct: (\.\./)+etc resolves to /etc, outside the cohort folder"),
    ("absolute path outside", dict(rows=["P001,benign,ct/P001,{elsewhere}/roi.npy,,,,"]),
     r"column roi: /.*/elsewhere/roi.npy resolves to .*, outside the cohort folder"),
    ("mask outside", dict(rows=["P001,benign,ct/P001,P001_roi.npy,,1,../elsewhere/roi.npy,"]),
     r"column mask_soft_tissue_mass: \.\./elsewhere/roi.npy resolves to .*, outside the cohort folder"),
    ("symlink out", dict(rows=["P001,benign,link_out,P001_roi.npy,,,,"]),
     r"column ct: link_out resolves to .*/elsewhere/ct, outside the cohort folder"),
]


@pytest.mark.parametrize("case", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_manifests_name_manifest_row_column_and_reason(cohort_dir, case):
    rows = [row.format(elsewhere=cohort_dir.parent / "elsewhere") for row in case["rows"]]
    path = write(cohort_dir, *rows, header=case.get("header", HEADER))
    expected = next(b[2] for b in BAD if b[1] is case)
    with pytest.raises(InputError, match=expected) as caught:
        read_manifest(path)
    assert str(path) in str(caught.value)


def test_all_bad_rows_reported_at_once_and_skip_bad_keeps_the_good(cohort_dir):
    rows = [GOOD[0], "P002,unknown,ct/P002,P002_roi.npy,,,,", "P003,benign,ct/P003,P001_roi.npy,,,,"]
    path = write(cohort_dir, *rows)
    with pytest.raises(InputError, match=r"2 problem\(s\).*\n.*row 2.*\n.*row 3"):
        read_manifest(path)
    cohort = read_manifest(path, skip_bad=True)
    assert [p.patient_id for p in cohort.patients] == ["P001"]
    assert len(cohort.problems) == 2 and "row 3 (patient_id P003), column ct" in cohort.problems[1]


def test_missing_manifest(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "manifest.csv")


def test_paths_that_resolve_inside_are_accepted_and_allow_outside_accepts_the_rest(cohort_dir):
    (cohort_dir / "link_in").symlink_to(cohort_dir / "ct" / "P002")
    inside = [f"P001,benign,ct/../ct/P001,{cohort_dir / 'P001_roi.npy'},,,,",  # '..' and absolute, both inside
              "P002,benign,link_in,P002_roi.npy,,,,"]  # a symlink to a folder inside
    assert [p.ct for p in read_manifest(write(cohort_dir, *inside)).patients] == [
        cohort_dir / "ct" / ".." / "ct" / "P001", cohort_dir / "link_in"]
    outside = write(cohort_dir, "P001,benign,../elsewhere/ct,P001_roi.npy,,1,../elsewhere/roi.npy,")
    with pytest.raises(InputError, match="outside the cohort folder"):
        read_manifest(outside)
    (patient,) = read_manifest(outside, allow_outside=True).patients
    assert patient.ct == cohort_dir / ".." / "elsewhere" / "ct"
    assert patient.masks == {"soft_tissue_mass": cohort_dir / ".." / "elsewhere" / "roi.npy"}


def test_short_rows_and_empty_trailing_fields_are_read_as_empty(cohort_dir):
    cohort = read_manifest(write(cohort_dir, "P001,benign,ct/P001,P001_roi.npy", GOOD[1] + ",,"))
    first, second = cohort.patients
    assert first.roi_label is None and first.features == {} and first.readers == {}
    assert second.roi_label == 32 and second.features == {"soft_tissue_mass": 1}


def test_the_cv_command_takes_allow_outside_and_keeps_its_run_key(tmp_path):
    stores = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    allowed = resolve(parse_args(["--cohort", "manifest.csv", "--allow-outside", *stores]))
    refused = resolve(parse_args(["--cohort", "manifest.csv", *stores]))
    assert allowed.allow_outside and not refused.allow_outside
    assert allowed.key("cohort") == refused.key("cohort")  # where files may lie changes no result


def test_the_optional_level_and_centre_columns_are_read(cohort_dir):
    header = HEADER + ",vertebra,centre"
    cohort = read_manifest(write(cohort_dir, GOOD[0] + ",L1 , site A", GOOD[1] + ",,", header=header))
    first, second = cohort.patients
    assert (first.vertebra, first.centre) == ("L1", "site A") and (second.vertebra, second.centre) == ("", "")
    assert read_manifest(write(cohort_dir, *GOOD)).patients[0].vertebra == ""  # columns absent
