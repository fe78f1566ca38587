"""ROIs as hospitals store them in DICOM: a SEG written with highdicom and an RTSTRUCT written from contours, both on
the real JPEG 2000 series, must give the NIfTI labels voxel for voxel; pydicom's own RTSTRUCT file rasterises as
counted by hand; ROIs that do not match the CT are refused."""

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as Polygon
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import binary_fill_holes
from skimage.measure import find_contours

from vfrac.cohort import Patient
from vfrac.data.cache import CropSettings, build_entry
from vfrac.errors import InputError
from vfrac.io.dicom_roi import rasterise
from vfrac.io.grid import Volume
from vfrac.io.volume import load_mask, load_volume

REAL = Path(__file__).resolve().parents[2] / "examples" / "real-ct"
SERIES, LABELS = REAL / "abdomen-t11-t12-dicom", REAL / "abdomen-t11-t12-labels.nii.gz"
VERTEBRAE = {1: ("T12", 32), 2: ("T11", 33)}  # segment / ROI number: (name, value in the NIfTI labels)
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
CT_IMAGE_CLASS = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def ct():
    volume = load_volume(SERIES)
    return volume, load_mask(LABELS, volume)


def source_images() -> list:
    """The series' datasets in the Volume's slice order (increasing position along the slice normal)."""
    datasets = [pydicom.dcmread(path) for path in SERIES.iterdir()]
    for dataset in datasets:  # the anonymised series left its class empty; a PACS export names it
        dataset.SOPClassUID = CT_IMAGE_CLASS
    normal = np.cross(*np.reshape(np.asarray(datasets[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(datasets, key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)))


def write_seg(path: Path, labels: np.ndarray, sources: list, fractional: bool = False) -> Path:
    """A SEG of the two vertebrae on the series' own frames, as a hospital's highdicom-based tool writes one."""
    descriptions = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=name, segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Bone, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for number, (name, _) in VERTEBRAE.items()]
    if fractional:
        pixels = np.stack([(labels == value).astype(np.float32) for _, value in VERTEBRAE.values()], axis=-1)
    else:
        pixels = np.zeros(labels.shape, np.uint8)
        for number, (_, value) in VERTEBRAE.items():
            pixels[labels == value] = number
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else
        hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=300,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="vfrac tests", manufacturer_model_name="tests",
        software_versions="1", device_serial_number="1")
    seg.save_as(path)
    return path


def write_rtstruct(path: Path, volume, labels: np.ndarray, rois: dict) -> Path:
    """An RTSTRUCT of the labelled vertebrae: per slice, the iso-0.5 contours of each label (marching squares
    between voxel centres, so every voxel centre lies on its own side, holes included)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.Modality, ds.PatientID = RTSTRUCT_CLASS, "RTSTRUCT", "VF-TEST"
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, value) in rois.items():
        ds.StructureSetROISequence.append(Dataset())
        ds.StructureSetROISequence[-1].ROINumber, ds.StructureSetROISequence[-1].ROIName = number, name
        contours = []
        for z in np.flatnonzero((labels == value).any(axis=(1, 2))):
            for line in find_contours(np.pad(labels[z] == value, 1).astype(float), 0.5):
                zyx = np.c_[np.full(len(line), z), line - 1, np.ones(len(line))]
                points = (volume.affine @ zyx.T)[:3].T
                contour = Dataset()
                contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(points)
                contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
                contours.append(contour)
        item = Dataset()
        item.ReferencedROINumber, item.ContourSequence = number, contours
        ds.ROIContourSequence.append(item)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_highdicom_seg_on_the_real_series_equals_the_nifti_labels_voxel_for_voxel(ct, tmp_path):
    volume, labels = ct
    path = write_seg(tmp_path / "vertebrae.dcm", labels, source_images())
    for number, (_, value) in VERTEBRAE.items():
        np.testing.assert_array_equal(load_mask(path, volume, number) == number, labels == value)
    both = load_mask(path, volume)  # no label: the segments as a label map
    assert set(np.unique(both)) == {0, 1, 2} and np.array_equal(both == 2, labels == 33)
    with pytest.raises(InputError, match=r"no segment number 7; it holds 1 'T12', 2 'T11'"):
        load_mask(path, volume, 7)


def test_a_seg_of_a_few_frames_and_a_fractional_seg_are_placed_by_their_geometry(ct, tmp_path):
    volume, labels = ct
    sources = source_images()
    kept = slice(5, 15)  # a SEG of half the series' frames
    few = write_seg(tmp_path / "few.dcm", labels[kept], sources[kept])
    expected = np.zeros_like(labels)
    expected[kept] = labels[kept]
    assert (expected == 33).any() and ((labels == 33) != (expected == 33)).any()
    np.testing.assert_array_equal(load_mask(few, volume, 2) == 2, expected == 33)
    fractional = write_seg(tmp_path / "fractional.dcm", labels, sources, fractional=True)
    np.testing.assert_array_equal(load_mask(fractional, volume, 1) == 1, labels == 32)


def test_a_seg_made_on_another_ct_is_refused(ct, tmp_path):
    volume, labels = ct
    path = write_seg(tmp_path / "vertebrae.dcm", labels, source_images())
    other = load_volume(REAL / "abdomen-pelvis-ct.nii.gz")
    with pytest.raises(InputError, match="vertebrae.dcm: "):
        load_mask(path, other, 1)


def test_an_rtstruct_on_the_real_series_equals_the_nifti_labels_voxel_for_voxel(ct, tmp_path):
    volume, labels = ct
    path = write_rtstruct(tmp_path / "rs.dcm", volume, labels, {7: ("T12", 32), 9: ("T11", 33)})
    np.testing.assert_array_equal(load_mask(path, volume, 7) == 7, labels == 32)
    np.testing.assert_array_equal(load_mask(path, volume, 9) == 9, labels == 33)
    with pytest.raises(InputError, match=r"2 ROIs with closed contours \(7 'T12', 9 'T11'\); as the roi, say which"):
        load_mask(path, volume)
    holes = [z for z in range(volume.shape[0]) if (binary_fill_holes(labels[z] == 32) != (labels[z] == 32)).any()]
    assert holes  # the canal makes holes in the arch's slices: the even-odd rule was exercised


def test_a_patient_whose_roi_is_a_seg_or_rtstruct_gets_the_crops_of_its_nifti_roi(ct, tmp_path):
    volume, labels = ct
    seg = write_seg(tmp_path / "seg.dcm", labels, source_images())
    rtstruct = write_rtstruct(tmp_path / "rs.dcm", volume, labels, {4: ("T11", 33)})
    settings = CropSettings(cache_size=64)
    reference = build_entry(Patient("VF1", "benign", SERIES, LABELS, 33), settings)
    for roi, label in ((seg, 2), (rtstruct, 4), (rtstruct, None)):
        entry = build_entry(Patient("VF1", "benign", SERIES, roi, label), settings)
        np.testing.assert_array_equal(entry.crops, reference.crops)
        np.testing.assert_array_equal(entry.slices, reference.slices)


def test_pydicoms_rtstruct_rasterises_as_counted_by_hand():
    path = get_testdata_file("rtstruct.dcm")
    # ROI 1 'patient': contours at z = -200, -190, -180 mm. A grid of 10 mm slices from z = -200 and 5 mm pixels
    # whose centres sit at x, y = -247.5 + 5 k: no centre lies on a contour's edge.
    affine = np.array([[0, 0, 5, -247.5], [0, 5, 0, -247.5], [10, 0, 0, -200], [0, 0, 0, 1]], float)
    reference = Volume(np.zeros((3, 100, 100), np.float32), affine)
    mask = load_mask(Path(path), reference, 1) == 1
    contours = pydicom.dcmread(path, force=True).ROIContourSequence[0].ContourSequence
    first = np.asarray(contours[0].ContourData, float).reshape(-1, 3)
    assert first[:, :2].min(axis=0).tolist() == [-200, -150] and first[:, :2].max(axis=0).tolist() == [200, 150]
    # the first contour is the rectangle |x| < 200, |y| < 150: 80 x 60 centres
    assert mask[0].sum() == 80 * 60
    # rows: y = -247.5 + 5 r within +-150 for r = 20..79; columns: x within +-200 for c = 10..89
    assert mask[0, 20:80, 10:90].all() and not mask[0, :20].any() and not mask[0, 80:].any()
    for z, contour in enumerate(contours):  # each slice equals a plain point-in-polygon count of its contour
        points = np.asarray(contour.ContourData, float).reshape(-1, 3)[:, :2]
        ys, xs = np.mgrid[0:100, 0:100] * 5.0 - 247.5
        expected = Polygon(points).contains_points(np.c_[xs.ravel(), ys.ravel()]).reshape(100, 100)
        np.testing.assert_array_equal(mask[z], expected)
    with pytest.raises(InputError, match="ROI number 2 has no closed planar contour; ROIs with one: 1 'patient'"):
        load_mask(Path(path), reference, 2)


def test_contours_off_the_cts_slices_or_outside_its_field_are_refused():
    contours = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True).ROIContourSequence[0].ContourSequence
    between = np.array([[0, 0, 5, -247.5], [0, 5, 0, -247.5], [10, 0, 0, -195], [0, 0, 0, 1]], float)
    with pytest.raises(InputError, match="does not lie on one of the CT's slices"):
        rasterise(contours, Volume(np.zeros((3, 100, 100), np.float32), between), "rs")
    small = np.array([[0, 0, 1, -50], [0, 1, 0, -50], [10, 0, 0, -200], [0, 0, 0, 1]], float)
    with pytest.raises(InputError, match="reaches outside the CT's field of view"):
        rasterise(contours, Volume(np.zeros((3, 100, 100), np.float32), small), "rs")


def test_a_dicom_file_that_is_not_an_roi_is_refused(ct, tmp_path):
    volume, _ = ct
    image = next(SERIES.iterdir())
    copy = tmp_path / "image.dcm"
    copy.write_bytes(image.read_bytes())
    with pytest.raises(InputError, match="must be a SEG or an RTSTRUCT, this file's Modality is 'CT'"):
        load_mask(copy, volume)
