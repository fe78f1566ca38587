"""The other class's maps beside the call's: drawn, shown on the sheet and the review page, never filed as DICOM."""

import re

import cv2
import numpy as np
import pydicom

from explain.page import write_page, write_sheet
from explain.render import Folders, draw
from explain.volumes import map_volume
from vfrac.data.crops import input_to_slice
from vfrac.io.grid import Volume
from vfrac.io.nifti import read_nifti

SIZE = 32


def corner(rows: slice, cols: slice) -> np.ndarray:
    cam = np.zeros((SIZE, SIZE), np.float32)
    cam[rows, cols] = 1.0
    return cam


def drawn(tmp_path):
    """Two slices of a 6 x 64 x 64 CT, the first called malignant, the second benign; one method. The call's maps
    are hot top left, the other class's bottom right."""
    axial = np.array([[0, 0, 0.8, 0], [0, 0.8, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])  # (z, y, x) -> LPS mm
    volume = Volume(np.zeros((6, 64, 64), np.float32), axial)
    chosen, classes = [(2, 0.8), (3, 0.3)], np.array([1, 0])
    called = {"gradcam": np.stack([corner(slice(0, 8), slice(0, 8))] * 2)}
    other = {"gradcam": np.stack([corner(slice(24, 32), slice(24, 32))] * 2)}
    transforms = [input_to_slice((16, 16, 24), 0.2, 64, SIZE)] * 2
    bone = np.full((2, SIZE, SIZE), 120, np.uint8)
    result = draw(volume, "VF-9", chosen, classes, called, other, bone, transforms,
                  Folders(tmp_path / "maps", tmp_path / "overlays", tmp_path / "dicom"))
    return result, volume, chosen, other, transforms


def test_the_other_class_is_drawn_beside_the_call_and_never_filed_as_dicom(tmp_path):
    result, volume, chosen, other, transforms = drawn(tmp_path)
    assert [p.name for p in result.overlays[0]["gradcam"]] == ["gradcam_z2_crop.png", "gradcam_z2_slice.png"]
    assert [p.name for p in result.other_overlays[1]["gradcam"]] == ["gradcam_other_z3_crop.png",
                                                                     "gradcam_other_z3_slice.png"]
    crop, other_crop = (cv2.imread(str(pair["gradcam"][0])) for pair in (result.overlays[0], result.other_overlays[0]))
    heat = lambda image: (image[..., 2].astype(int) - image[..., 0]) > 60  # noqa: E731  jet's red end
    assert heat(crop)[:48, :48].any() and not heat(crop)[300:384, 300:384].any()  # the call's: top left
    assert heat(other_crop)[300:384, 300:384].any() and not heat(other_crop)[:48, :48].any()  # the other: bottom right
    assert result.other_maps["gradcam"].name == "gradcam_other.nii.gz"
    data, _ = read_nifti(result.other_maps["gradcam"], np.float32)
    np.testing.assert_allclose(data, map_volume(volume.shape, [2, 3], other["gradcam"], transforms))
    # DICOM: the call's overlays (one per slice and method) and the call's map only
    captures = sorted((tmp_path / "dicom").glob("*.dcm"))
    assert len(captures) == 2 and [p.name for p in (tmp_path / "dicom" / "maps").iterdir()] == ["gradcam.dcm"]
    assert np.array_equal(pydicom.dcmread(captures[0]).pixel_array,
                          cv2.imread(str(result.overlays[0]["gradcam"][1]))[..., ::-1])


def shown(result, chosen):
    return [{"slice": z, "probability": p, "call": call, "images": result.overlays[k],
             "other": result.other_overlays[k], "attention": None, "attribution": [0.2, 0.6, 0.2]}
            for k, ((z, p), call) in enumerate(zip(chosen, ("malignant", "benign"), strict=True))]


def test_the_sheet_shows_each_slices_evidence_for_both_classes_and_says_which_was_the_call(tmp_path):
    result, _, chosen, _, _ = drawn(tmp_path)
    prediction = {"patient_id": "VF-9", "call": "malignant", "probability": 0.55, "threshold": 0.5,
                  "aggregation": "mean", "model": {"label": "vfrac-resnet50 v1"},
                  "input": {"ct_shape": [6, 64, 64], "spacing_mm": [2.0, 0.8, 0.8], "input_size": SIZE,
                            "window": [400.0, 1800.0]}}
    sheet = write_sheet(tmp_path / "sheet.html", prediction, shown(result, chosen), ("gradcam",), "conv4").read_text()
    assert "gradcam on the crop: evidence for malignant (the call), beside it for benign" in sheet
    assert "gradcam on the axial slice: evidence for benign (the call), beside it for malignant" in sheet
    images = re.findall(r"<img src='([^']+)' alt='([^']+)'", sheet)
    assert images[:4] == [("overlays/gradcam_z2_crop.png", "gradcam, evidence for malignant (the call), on the crop"),
                          ("overlays/gradcam_other_z2_crop.png", "gradcam, evidence for benign, on the crop"),
                          ("overlays/gradcam_z2_slice.png",
                           "gradcam, evidence for malignant (the call), on the axial slice"),
                          ("overlays/gradcam_other_z2_slice.png", "gradcam, evidence for benign, on the axial slice")]
    assert len(images) == 2 * 2 * 2  # slices x (crop, slice) x (call, other class)


def test_the_review_page_has_the_faithfulness_table_and_how_to_read_it(tmp_path):
    rows = [{"method": "gradcam", "maps": "trained", "deletion_auc": 0.31, "insertion_auc": 0.72, "slices": 6},
            {"method": "none", "maps": "random order", "deletion_auc": 0.5, "insertion_auc": 0.49, "slices": 6}]
    page = write_page(tmp_path / "review" / "index.html", [], [], [], rows, ("gradcam",), "conv4", "0" * 32,
                      tmp_path).read_text()
    assert "<h2>Faithfulness: deleting and inserting what the maps point at</h2>" in page
    assert "a faithful method has a lower deletion and a higher insertion area" in page
    assert "<tr><td>gradcam</td><td>trained</td><td>0.310</td><td>0.720</td><td>6</td></tr>" in page
    assert "<td>random order</td><td>0.500</td><td>0.490</td>" in page
