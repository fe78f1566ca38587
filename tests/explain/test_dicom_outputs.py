"""The DICOM objects vfrac writes for a viewer pass dicom3tools' IOD checker, with the pseudonymous id only."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from explain import secondary_capture
from explain.source_study import SourceStudy
from explain.structured_report import CALLS, PROBABILITY, write_prediction_sr
from explain.volumes import pseudonymous_source, write_parametric_map, write_roi_seg
from vfrac.errors import InputError
from vfrac.io.dicom_roi import read_dicom_roi
from vfrac.io.grid import Volume
from vfrac.io.volume import load_volume

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")


def dciodvfy_errors(path) -> list[str]:
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


def a_map() -> tuple[np.ndarray, np.ndarray]:
    volume = np.zeros((5, 16, 16), np.float32)
    volume[2, 4:8, 4:10] = 0.7
    return volume, np.diag([2.5, 0.7, 0.7, 1.0])


def test_a_secondary_capture_series_validates_and_names_only_the_pseudonym(tmp_path):
    overlay = np.zeros((32, 48, 3), np.uint8)
    overlay[..., 2] = 200
    paths = secondary_capture.write_series(tmp_path, "VF-001", [("gradcam slice 3", overlay)] * 2)
    for path in paths:
        assert dciodvfy_errors(path) == []
        ds = pydicom.dcmread(path)
        assert ds.PatientID == ds.PatientName.family_name == "VF-001" and ds.BodyPartExamined == "SPINE"
        assert all(ds.get(name) == "" for name in ("PatientBirthDate", "PatientSex", "AccessionNumber"))
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in paths}) == 1


def test_a_parametric_map_validates(tmp_path):
    volume, affine = a_map()
    path = write_parametric_map(tmp_path / "gradcam.dcm", "VF-001", volume, affine, "gradcam")
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.PatientID == "VF-001" and ds.BodyPartExamined == "SPINE" and "Laterality" not in ds


def test_the_roi_as_a_dicom_seg_validates_and_reads_back_voxel_for_voxel(tmp_path):
    roi = np.zeros((6, 16, 16), bool)
    roi[2:4, 5:9, 4:10] = True
    affine = np.diag([2.5, 0.7, 0.7, 1.0])
    path = write_roi_seg(tmp_path / "seg.dcm", "VF-001", roi, affine)
    assert dciodvfy_errors(path) == []
    reference = Volume(np.zeros(roi.shape, np.float32), affine)
    assert np.array_equal(read_dicom_roi(path, reference) != 0, roi)


def test_the_prediction_as_a_structured_report_validates_and_holds_its_numbers(tmp_path):
    prediction = {"probability": 0.73, "threshold": 0.5, "call": "malignant", "model": {"label": "vfrac-resnet50 v1"},
                  "uncertainty": {"spread_sd": 0.08, "reasons": ["fold models disagree"]}}
    volume, affine = a_map()
    path = write_prediction_sr(tmp_path / "sr.dcm", prediction, {"input_size": 64},
                               [pseudonymous_source("VF-001", volume.shape, affine)])
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SR" and ds.PatientID == "VF-001"
    items = [item for group in ds.ContentSequence if "ContentSequence" in group for item in group.ContentSequence]
    found = {}
    for item in pydicom_items(ds):
        name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
        if name == PROBABILITY.value:
            found["probability"] = float(item.MeasuredValueSequence[0].NumericValue)
        if "ConceptCodeSequence" in item and item.ConceptCodeSequence[0].CodeValue == CALLS["malignant"].value:
            found["call"] = "malignant"
    assert items and found == {"probability": 0.73, "call": "malignant"}


def pydicom_items(ds):
    """Every content item of an SR, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from pydicom_items(item)


def test_a_ct_without_uids_cannot_be_filed_with_its_study(tmp_path):
    """The example series had its UIDs removed: the study form is refused in words, not by a traceback."""
    series = Path(__file__).resolve().parents[2] / "examples" / "real-ct" / "abdomen-t11-t12-dicom"
    with pytest.raises(InputError, match="lack .*SOPClassUID.*use --dicom-output pseudonymous"):
        SourceStudy.read(series, load_volume(series).affine)
