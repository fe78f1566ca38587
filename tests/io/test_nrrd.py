"""NRRD masks (3D Slicer's .seg.nrrd and labelmaps): placed by their own geometry on real CT, hostile files refused."""

import gzip

import nibabel as nib
import nrrd
import numpy as np
import pytest

from tests.io.test_volume import REAL_CT, needs_real_ct
from vfrac.errors import InputError
from vfrac.io.nrrd import read_nrrd_mask
from vfrac.io.volume import load_mask, load_volume

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def slicer_header(affine_ras: np.ndarray, space: str = "right-anterior-superior", layer_axis: bool = False) -> dict:
    """A header as 3D Slicer writes it for voxels indexed like the NIfTI whose RAS affine is given."""
    directions, origin = affine_ras[:3, :3].T.copy(), affine_ras[:3, 3].copy()
    if space == "left-posterior-superior":
        directions, origin = directions @ RAS_TO_LPS, RAS_TO_LPS @ origin
    if layer_axis:
        directions = np.vstack([np.full(3, np.nan), directions])
    return {"space": space, "space directions": directions, "space origin": origin,
            "kinds": (["list"] if layer_axis else []) + ["domain"] * 3}


@pytest.fixture(scope="module")
def t11_t12():
    """The JPEG 2000 DICOM series, its labels as NIfTI, and those labels' voxels and RAS affine."""
    labels = nib.load(REAL_CT / "abdomen-t11-t12-labels.nii.gz")
    return (load_volume(REAL_CT / "abdomen-t11-t12-dicom"), REAL_CT / "abdomen-t11-t12-labels.nii.gz",
            np.asarray(labels.dataobj).astype(np.uint8), labels.affine)


@needs_real_ct
def test_a_slicer_labelmap_in_ras_equals_the_nifti_voxel_for_voxel_on_the_dicom_series(tmp_path, t11_t12):
    volume, nifti, labels, affine = t11_t12
    path = tmp_path / "labels.nrrd"
    nrrd.write(str(path), labels, slicer_header(affine), compression_level=6)  # gzip, Slicer's default
    from_nrrd, from_nifti = load_mask(path, volume), load_mask(nifti, volume)
    assert from_nrrd.shape == volume.shape and np.array_equal(from_nrrd, from_nifti)
    assert {32, 33} <= set(np.unique(from_nrrd))  # T12 and T11 where the NIfTI has them


@needs_real_ct
def test_a_cropped_one_layer_segmentation_in_lps_lands_on_the_same_voxels(tmp_path, t11_t12):
    volume, nifti, labels, affine = t11_t12
    t12 = np.argwhere(labels == 32)
    low, high = t12.min(axis=0), t12.max(axis=0) + 1
    crop = (labels[tuple(slice(a, b) for a, b in zip(low, high, strict=True))] == 32).astype(np.uint8)
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]  # the crop's first voxel
    path = tmp_path / "t12.seg.nrrd"
    nrrd.write(str(path), crop[None], slicer_header(shifted, "left-posterior-superior", layer_axis=True)
               | {"encoding": "raw", "Segment0_Name": "T12", "Segment0_LabelValue": "1"})
    placed = load_mask(path, volume)
    assert np.array_equal(placed != 0, load_mask(nifti, volume) == 32) and placed.max() == 1


@needs_real_ct
def test_the_nifti_cts_vertebrae_as_nrrd_keep_their_labels_and_geometry(tmp_path):
    volume = load_volume(REAL_CT / "abdomen-pelvis-ct.nii.gz")
    labels = nib.load(REAL_CT / "abdomen-pelvis-vertebrae.nii.gz")
    path = tmp_path / "vertebrae.nrrd"
    nrrd.write(str(path), np.asarray(labels.dataobj).astype(np.uint8), slicer_header(labels.affine))
    voxels, affine = read_nrrd_mask(path)
    assert voxels.shape == labels.shape and np.allclose(affine[:3, 3], RAS_TO_LPS @ labels.affine[:3, 3])
    placed = load_mask(path, volume)
    assert np.array_equal(placed, load_mask(REAL_CT / "abdomen-pelvis-vertebrae.nii.gz", volume))
    assert set(np.unique(placed)) >= {26, 27, 28, 29, 30, 31, 32}  # S1 to T12


@needs_real_ct
def test_a_segmentation_on_another_grid_is_refused(tmp_path, t11_t12):
    volume, _, labels, affine = t11_t12
    coarse = affine.copy()
    coarse[:3, :3] *= 2.0  # twice the spacing: other voxels
    path = tmp_path / "coarse.nrrd"
    nrrd.write(str(path), labels[::2, ::2, ::2].copy(), slicer_header(coarse))
    with pytest.raises(InputError, match="not the CT's grid"):
        load_mask(path, volume)


def test_bad_and_hostile_files_are_refused_clearly(tmp_path):
    header = slicer_header(np.eye(4))
    two_layers = tmp_path / "overlap.seg.nrrd"
    nrrd.write(str(two_layers), np.zeros((2, 4, 4, 4), np.uint8), slicer_header(np.eye(4), layer_axis=True))
    no_space = tmp_path / "no-space.nrrd"
    nrrd.write(str(no_space), np.zeros((4, 4, 4), np.uint8))
    floats = tmp_path / "floats.nrrd"
    nrrd.write(str(floats), np.zeros((4, 4, 4), np.float32), header)
    cases = {
        two_layers: "2 layers",
        no_space: "no 'space directions'",
        floats: "not integer mask labels",
        _raw_nrrd(tmp_path / "huge.nrrd", "60000 60000 60000", b""): "over the budget",
        # 10 x 10 x 10 voxels claimed, 50 MB of zeros inflated: refused after 1,001 bytes
        _raw_nrrd(tmp_path / "bomb.nrrd", "10 10 10", gzip.compress(bytes(50 << 20)), "gzip"): "more voxel bytes",
        _raw_nrrd(tmp_path / "short.nrrd", "10 10 10", bytes(999)): "fewer voxel bytes",
        _raw_nrrd(tmp_path / "damaged.nrrd", "10 10 10", b"\x1f\x8b\x08\x00garbage" * 10, "gzip"): "damaged",
        _raw_nrrd(tmp_path / "bzip.nrrd", "10 10 10", b"", "bzip2"): "encoding 'bzip2'",
        tmp_path / "not.nrrd": "cannot be read as NRRD",
    }
    (tmp_path / "not.nrrd").write_bytes(b"P5 not an nrrd\n")
    for path, reason in cases.items():
        with pytest.raises(InputError, match=reason):
            read_nrrd_mask(path)


def _raw_nrrd(path, sizes: str, payload: bytes, encoding: str = "raw"):
    """A hand-written NRRD whose header says what it likes about the payload that follows."""
    path.write_bytes(("NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\n"
                      f"sizes: {sizes}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: {encoding}\n"
                      "space origin: (0,0,0)\n\n").encode() + payload)
    return path
