"""NIfTI loading, mask placement by geometry, and the real spine CTs in ../shared."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_factory import write_series
from vfrac.data.crops import crop_stack, roi_boxes
from vfrac.errors import InputError
from vfrac.io.grid import IJK_FROM_ZYX, RAS_TO_LPS, Volume
from vfrac.io.volume import load_mask, load_volume

# The project's shared copy, or the byte-identical one the repository carries.
SHARED_REAL_CT = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-ct"
REAL_CT = SHARED_REAL_CT if SHARED_REAL_CT.is_dir() else Path(__file__).resolve().parents[2] / "examples" / "real-ct"
needs_real_ct = pytest.mark.skipif(not REAL_CT.is_dir(), reason=f"{REAL_CT} is absent")


def save_nifti(path, data_zyx, affine_lps_zyx):
    """Write (z, y, x) data with an LPS affine the way NIfTI stores it (i, j, k, RAS)."""
    data = np.transpose(data_zyx, (2, 1, 0))
    nib.save(nib.Nifti1Image(data, RAS_TO_LPS @ affine_lps_zyx @ IJK_FROM_ZYX), str(path))
    return path


@pytest.fixture
def ct(tmp_path):
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 3000, size=(5, 10, 14), dtype=np.int16)
    write_series(tmp_path / "ct", stored, spacing=(0.8, 0.6))
    return load_volume(tmp_path / "ct")


def test_nifti_ct_loads_like_the_dicom_series(tmp_path, ct):
    path = save_nifti(tmp_path / "ct.nii.gz", ct.hu, ct.affine)
    volume = load_volume(path)
    assert np.array_equal(volume.hu, ct.hu)
    assert np.allclose(volume.affine, ct.affine, atol=1e-4)


@pytest.mark.parametrize("axes, flips", [
    ((0, 1, 2), ()), ((0, 1, 2), (0, 2)), ((2, 0, 1), (1,)), ((1, 2, 0), (0, 1, 2)),
])
def test_nifti_stored_in_any_axis_order_reads_the_same(tmp_path, ct, axes, flips):
    """The same CT written with permuted, flipped voxel axes (and a matching affine)."""
    data, affine = ct.hu, ct.affine.copy()
    for axis in flips:
        data = np.flip(data, axis)
        flip = np.eye(4)
        flip[axis, axis], flip[axis, 3] = -1, ct.hu.shape[axis] - 1
        affine = affine @ flip
    data = np.transpose(data, axes)
    permute = np.eye(4)[list(axes) + [3]].T
    affine = affine @ permute
    path = save_nifti(tmp_path / "turned.nii.gz", data, affine)
    volume = load_volume(path)
    assert np.array_equal(volume.hu, ct.hu)
    assert np.allclose(volume.affine, ct.affine, atol=1e-4)
    mask_path = save_nifti(tmp_path / "mask.nii.gz", (data > 976).astype(np.uint8), affine)
    assert np.array_equal(load_mask(mask_path, ct), (ct.hu > 976).astype(np.uint8))


@pytest.mark.parametrize("image_class, dtype, slope, inter", [
    (nib.Nifti1Image, "<i2", 1.0, 0.0),
    (nib.Nifti1Image, "<i2", 2.5, -1024.0),
    (nib.Nifti1Image, ">i2", 1.0, -1024.0),
    (nib.Nifti2Image, "<f4", 1.0, 0.0),
    (nib.Nifti1Image, "|u1", 1.0, 0.0),
], ids=["int16", "int16-scaled", "big-endian", "nifti2-float32", "uint8"])
@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_nifti_voxels_are_streamed_scaled_and_typed_like_nibabel(
        tmp_path, monkeypatch, ct, image_class, dtype, slope, inter, name):
    monkeypatch.setattr("vfrac.io.nifti.READ_CHUNK_BYTES", 64)  # several reads per slice
    stored = (np.abs(ct.hu) % 200).astype(dtype)
    image = image_class(np.transpose(stored, (2, 1, 0)), RAS_TO_LPS @ ct.affine @ IJK_FROM_ZYX)
    image.header.set_slope_inter(slope, inter)
    nib.save(image, str(tmp_path / name))
    assert np.array_equal(load_volume(tmp_path / name).hu, (stored * slope + inter).astype(np.float32))
    mask = load_mask(tmp_path / name, ct)
    assert np.array_equal(mask, stored * slope + inter)
    assert mask.dtype == (np.dtype(dtype).newbyteorder("=") if (slope, inter) == (1.0, 0.0) else np.float32)


def test_mask_on_a_cropped_grid_is_placed_by_its_offset(tmp_path, ct):
    mask = np.zeros(ct.shape, np.uint8)
    mask[1:4, 2:6, 3:9] = 7
    origin = np.eye(4)
    origin[:3, 3] = (1, 2, 3)  # the file holds only the labelled block
    path = save_nifti(tmp_path / "crop.nii.gz", mask[1:4, 2:6, 3:9], ct.affine @ origin)
    assert np.array_equal(load_mask(path, ct), mask)


def test_mask_of_another_grid_is_refused(tmp_path, ct):
    coarse = ct.affine.copy()
    coarse[:3, :3] *= 2
    path = save_nifti(tmp_path / "coarse.nii.gz", np.ones((3, 5, 7), np.uint8), coarse)
    with pytest.raises(InputError, match="coarse.nii.gz: its voxel grid is not the CT's grid"):
        load_mask(path, ct)
    shifted = ct.affine.copy()
    shifted[:3, 3] += ct.affine[:3, 2] * 200  # 200 columns away
    path = save_nifti(tmp_path / "far.nii.gz", np.ones(ct.shape, np.uint8), shifted)
    with pytest.raises(InputError, match="does not overlap the CT"):
        load_mask(path, ct)
    half = ct.affine.copy()
    half[:3, 3] += ct.affine[:3, 2] * 4  # four columns to the side: labels fall off the CT
    path = save_nifti(tmp_path / "half.nii.gz", np.ones(ct.shape, np.uint8), half)
    with pytest.raises(InputError, match=r"200 labelled mask voxels lie outside"):
        load_mask(path, ct)


def test_npy_mask_must_have_the_ct_shape(tmp_path, ct):
    np.save(tmp_path / "ok.npy", np.ones(ct.shape, np.uint8))
    assert load_mask(tmp_path / "ok.npy", ct).shape == ct.shape
    np.save(tmp_path / "bad.npy", np.ones((5, 14, 10), np.uint8))
    with pytest.raises(InputError, match=r"bad.npy: .npy mask has shape \(5, 14, 10\), but the CT is \(5, 10, 14\)"):
        load_mask(tmp_path / "bad.npy", ct)
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(InputError, match="junk.npy: cannot be read"):
        load_mask(tmp_path / "junk.npy", ct)
    with pytest.raises(InputError, match=r"a DICOM ROI must be a SEG or an RTSTRUCT, this file's Modality is 'CT'"):
        load_mask(tmp_path / "ct" / "IM0000.dcm", ct)  # a CT image given as the mask
    (tmp_path / "mask.txt").write_text("1 0 1")
    with pytest.raises(InputError, match=r"mask.txt: a mask must be .nii, .nii.gz, .nrrd \(.seg.nrrd\), .dcm"):
        load_mask(tmp_path / "mask.txt", ct)


def test_broken_nifti_is_an_input_error(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="broken.nii.gz: cannot be read as NIfTI"):
        load_volume(tmp_path / "broken.nii.gz")


def test_volume_spacing_comes_from_the_affine():
    affine = np.diag([2.5, 0.7, 0.6, 1.0])
    assert Volume(np.zeros((2, 2, 2), np.float32), affine).spacing == pytest.approx((2.5, 0.7, 0.6))


@needs_real_ct
def test_real_dicom_series_places_t12_on_bone():
    volume = load_volume(REAL_CT / "abdomen-t11-t12-dicom")
    assert volume.shape == (20, 512, 512)
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    labels = load_mask(REAL_CT / "abdomen-t11-t12-labels.nii.gz", volume)
    t12 = labels == 32
    assert t12.sum() > 10_000
    assert np.median(volume.hu[t12]) > 150  # a flipped placement lands on soft tissue
    # What a flip would give: the same mask mirrored along z or x is not on bone.
    assert np.median(volume.hu[t12[::-1]]) < 150 or np.median(volume.hu[t12[:, :, ::-1]]) < 150
    boxes = roi_boxes(t12, margin=0.1)
    assert len(boxes) == np.count_nonzero(t12.any(axis=(1, 2)))
    centre = boxes[len(boxes) // 2]
    crop = crop_stack(volume.hu, centre)
    assert crop.shape == (centre.size, centre.size, 3)
    assert np.mean(crop[..., 1] > 300) > 0.02  # cortical bone in the crop


@needs_real_ct
def test_real_nifti_ct_places_lumbar_vertebrae_on_bone():
    volume = load_volume(REAL_CT / "abdomen-pelvis-ct.nii.gz")
    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    labels = load_mask(REAL_CT / "abdomen-pelvis-vertebrae.nii.gz", volume)
    for label in range(27, 32):  # L5 .. L1
        assert np.median(volume.hu[labels == label]) > 150, label
    # Anterior is up, as in an axial DICOM: the body's centre lies above the vertebra's.
    bodies = load_mask(REAL_CT / "abdomen-pelvis-vertebral-bodies.nii.gz", volume) == 1
    l3 = labels == 29
    assert volume.affine[1, 1] > 0  # rows run towards posterior (+P in LPS)
    body_row = np.nonzero(l3 & bodies)[1].mean()
    vertebra_row = np.nonzero(l3)[1].mean()
    assert body_row < vertebra_row - 3


@needs_real_ct
def test_acquisition_fields_of_a_real_series_and_none_for_nifti():
    from vfrac.io.series import ACQUISITION, acquisition

    fields = acquisition(REAL_CT / "abdomen-t11-t12-dicom")
    assert fields == {"manufacturer": "SIEMENS", "model": "Biograph40_mCT 4R", "kvp": "120", "slice_thickness": "3"}
    assert set(fields) == set(ACQUISITION)  # nothing else (no identifier) is read out
    assert acquisition(REAL_CT / "abdomen-pelvis-ct.nii.gz") == {}
