"""The voxel budget in process: read from the environment, truncated files, what a legitimate read costs.

The memory bombs themselves (small files whose headers claim gigabytes) are read by
the command, one child process each under a 1 GiB address-space ceiling, in
tests/commands/test_faults.py, with the cases in bench/bench_faults.py.
"""

import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from tests.dicom_factory import nifti_header, write_gzip, write_npy_header, write_series
from vfrac.errors import InputError
from vfrac.io.budget import MAX_VOXELS, MAX_VOXELS_VARIABLE, voxel_budget
from vfrac.io.volume import load_mask, load_volume

__all__ = ["nifti_header", "write_gzip"]  # bench/bench_bombs.py imports them from here


def test_budget_is_read_from_the_environment_at_each_check(monkeypatch, tmp_path):
    monkeypatch.delenv(MAX_VOXELS_VARIABLE, raising=False)
    assert voxel_budget() == MAX_VOXELS == 2**30
    write_series(tmp_path / "ct", np.zeros((3, 12, 16), np.int16))
    monkeypatch.setenv(MAX_VOXELS_VARIABLE, "500")
    with pytest.raises(InputError, match=r"ct: claims 3 x 12 x 16 voxels \(5.8e2\), over the budget of 5.0e2 "
                                         r"\(VFRAC_MAX_VOXELS; raise it if the volume is real\)"):
        load_volume(tmp_path / "ct")
    monkeypatch.setenv(MAX_VOXELS_VARIABLE, "1e3")
    assert load_volume(tmp_path / "ct").shape == (3, 12, 16)
    monkeypatch.setenv(MAX_VOXELS_VARIABLE, "lots")
    with pytest.raises(InputError, match=r"VFRAC_MAX_VOXELS='lots': expected a positive number of voxels"):
        load_volume(tmp_path / "ct")


@pytest.mark.parametrize("name", ["short.nii", "short.nii.gz"])
def test_nifti_with_less_voxel_data_than_its_header_claims_is_truncated(tmp_path, name):
    head = nifti_header((64, 64, 64), np.int16) + bytes(1000)
    path = write_gzip(tmp_path / name, head) if name.endswith(".gz") else tmp_path / name
    if not name.endswith(".gz"):
        path.write_bytes(head)
    with pytest.raises(InputError, match=rf"{name}: damaged NIfTI: .*524,288 bytes.*\(truncated\?\)"):
        load_volume(path)


def test_npy_mask_with_less_data_than_its_header_claims_is_truncated(tmp_path):
    path = write_npy_header(tmp_path / "short.npy", (4, 5, 6))
    reference = load_volume(write_gzip(tmp_path / "ct.nii.gz", nifti_header((6, 5, 4)), zeros=120))
    with pytest.raises(InputError, match=r"short.npy: damaged .npy: the header claims 120 bytes of data, "
                                         r"the file holds 0 \(truncated\?\)"):
        load_mask(path, reference)


def peak_ratio(read) -> float:
    """Peak memory allocated while reading (imports done), over the float32 volume read."""
    read()
    tracemalloc.start()
    try:
        volume = read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / volume.hu.nbytes


def test_a_legitimate_volume_needs_little_more_memory_than_itself(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(-1024, 2000, size=(48, 256, 256), dtype=np.int16)
    nib.save(nib.Nifti1Image(np.transpose(stored, (2, 1, 0)), np.diag([-0.8, -0.8, 2.0, 1.0])),
             str(tmp_path / "ct.nii.gz"))
    write_series(tmp_path / "series", stored)
    assert peak_ratio(lambda: load_volume(tmp_path / "ct.nii.gz")) < 1.1  # was 1.5: int16, then float32
    assert peak_ratio(lambda: load_volume(tmp_path / "series")) < 1.2  # was 1.6: every file's pixels held
