"""The manifest: good rows become patients; each bad row is named with its reason."""

import numpy as np
import pytest

from vfrac.cohort import read_manifest
from vfrac.errors import InputError

HEADER = "patient_id,label,ct,roi,roi_label,feature_soft_tissue_mass,mask_soft_tissue_mass,reader_r1"


@pytest.fixture
def cohort_dir(tmp_path):
    for pid in ("P001", "P002"):
        (tmp_path / "ct" / pid).mkdir(parents=True)
        np.save(tmp_path / f"{pid}_roi.npy", np.zeros((2, 2, 2), np.uint8))
    return tmp_path


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
     r"column roi: ct/P001 should be a .nii, .nii.gz or .npy mask"),
    ("bad feature", dict(rows=["P001,benign,ct/P001,P001_roi.npy,,yes,,"]),
     r"column feature_soft_tissue_mass: 'yes' should be 0, 1 or empty"),
    ("bad reader", dict(rows=["P001,benign,ct/P001,P001_roi.npy,,,,maybe"]),
     r"column reader_r1: 'maybe' should be benign, malignant or empty"),
    ("bad roi label", dict(rows=["P001,benign,ct/P001,P001_roi.npy,T12,,,"]),
     r"column roi_label: 'T12' is not a whole number"),
    ("unsafe id", dict(rows=["../P001,benign,ct/P001,P001_roi.npy,,,,"]),
     r"column patient_id: '../P001' is empty or not a plain id"),
    ("no rows", dict(rows=[]), r"has a header but no patients"),
]


@pytest.mark.parametrize("case", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_manifests_name_manifest_row_column_and_reason(cohort_dir, case):
    path = write(cohort_dir, *case["rows"], header=case.get("header", HEADER))
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
