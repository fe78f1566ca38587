"""Memory bombs: small files whose headers claim gigabytes end in one clear InputError.

Every bomb is read in one child process under a 1 GiB address-space ceiling
(resource.RLIMIT_AS). The reader before the voxel budget died there with
MemoryError, or asked for 8 GB and more without one: each case must instead give
the InputError that names the file and the reason, having read only its header.
"""

import json
import re
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import RLELossless

from tests.dicom_factory import deflate_zeros, write_claim, write_deflated_zeros, write_series
from vfrac.budget import MAX_VOXELS, MAX_VOXELS_VARIABLE, voxel_budget
from vfrac.errors import InputError
from vfrac.volume import load_mask, load_volume

REPOSITORY = Path(__file__).resolve().parents[1]
UID_NAME = "1.2.826.0.1.3680043.8.498.1"
CEILING = 2**30
# Reads each case (kind, path, VFRAC_MAX_VOXELS or None) under the ceiling; prints the outcomes.
CHILD = """
import json, os, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({ceiling}, {ceiling}))
import numpy as np
from vfrac.volume import Volume, load_mask, load_volume
outcomes = {{}}
for case, (kind, path, budget) in json.loads(sys.stdin.read()).items():
    os.environ.pop("VFRAC_MAX_VOXELS", None)
    if budget:
        os.environ["VFRAC_MAX_VOXELS"] = budget
    try:
        if kind == "ct":
            load_volume(path)
        else:
            load_mask(path, Volume(np.zeros((2, 2, 2), np.float32), np.eye(4)))
        outcomes[case] = ["read", ""]
    except Exception as error:
        outcomes[case] = [type(error).__name__, str(error)]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent (pytest with TF)
peak_kb = next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]
outcomes["max_rss_mb"] = int(peak_kb) / 1024
print(json.dumps(outcomes))
"""


def nifti_header(shape, dtype=np.uint8) -> bytes:
    """A NIfTI-1 header claiming `shape`, with the 4 bytes that end it: 352 bytes."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    return header.binaryblock + bytes(4)


def write_gzip(path: Path, head: bytes, zeros: int = 0) -> Path:
    """A whole gzip member of `head` and `zeros` zero bytes, streamed: ~1 KB per MB of zeros."""
    crc, block = zlib.crc32(head), bytes(2**26)
    for start in range(0, zeros, len(block)):
        crc = zlib.crc32(block[: min(len(block), zeros - start)], crc)
    with open(path, "wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
        out.writelines(deflate_zeros(head, zeros))
        out.write(struct.pack("<II", crc, (len(head) + zeros) % 2**32))
    return path


def write_npy_header(path: Path, shape) -> Path:
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return path


def dicom_folder(folder: Path, write) -> Path:
    """A series folder of one file, named by a UID as scanners often do."""
    folder.mkdir()
    write(folder / f"{UID_NAME}.dcm")
    return folder


BOMBS = {
    # case: (kind, what to write, VFRAC_MAX_VOXELS, the expected message)
    "nii.gz header claiming 2000^3, as CT": ("ct", "header.nii.gz", None, (
        r"header.nii.gz: claims 2000 x 2000 x 2000 voxels \(8.0e9\), over the budget of 1.1e9")),
    "nii.gz header claiming 2000^3, as ROI": (
        "roi", "header.nii.gz", None, r"header.nii.gz: claims 2000 x 2000 x 2000 voxels \(8.0e9\)"),
    "nii header claiming 2000^3, as CT": (
        "ct", "header.nii", None, r"header.nii: claims 2000 x 2000 x 2000 voxels \(8.0e9\)"),
    "nii.gz of 1.1e9 compressed zeros, as CT": (
        "ct", "zeros.nii.gz", None, r"zeros.nii.gz: claims 1025 x 1024 x 1024 voxels \(1.1e9\), over the budget"),
    "nii.gz of 1.1e9 compressed zeros, as ROI": (
        "roi", "zeros.nii.gz", None, r"zeros.nii.gz: claims 1025 x 1024 x 1024 voxels \(1.1e9\), over the budget"),
    "npy header claiming 2000^3, as ROI": (
        "roi", "header.npy", None, r"header.npy: claims 2000 x 2000 x 2000 voxels \(8.0e9\)"),
    "DICOM claiming 60000 x 60000, uncompressed": (
        "ct", "native", None, r"native \(file 1 of 1\): claims 1 x 60000 x 60000 voxels \(3.6e9\), over the budget"),
    "DICOM claiming 60000 x 60000, RLE": (
        "ct", "rle", None, r"rle \(file 1 of 1\): claims 1 x 60000 x 60000 voxels \(3.6e9\), over the budget"),
    "deflated DICOM of one 60000 x 60000 frame": (
        "ct", "deflated", None, r"deflated \(file 1 of 1\): claims 1 x 60000 x 60000 voxels \(3.6e9\)"),
    "deflated DICOM of one 60000 x 60000 frame, budget raised": (
        "ct", "deflated", "1e10", r"deflated \(file 1 of 1\): header claims 1 x 60000 x 60000 x 8 bit "
        r"\(3,600,000,000 bytes\), more than 3,49\d,\d{3} bytes of compressed data can hold"),
    "deflated DICOM whose pixel data outgrows its 2000 x 2000 header": (
        "ct", "outgrown", None, r"outgrown \(file 1 of 1\): its deflated data set inflates past [\d,]+ bytes, "
        "more than its header's Rows, Columns and frames claim"),
}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    (root / "header.nii").write_bytes(nifti_header((2000, 2000, 2000)))
    return {
        "header.nii.gz": write_gzip(root / "header.nii.gz", nifti_header((2000, 2000, 2000))),
        "header.nii": root / "header.nii",
        "zeros.nii.gz": write_gzip(root / "zeros.nii.gz", nifti_header((1025, 1024, 1024)),
                                   zeros=1025 * 1024 * 1024),
        "header.npy": write_npy_header(root / "header.npy", (2000, 2000, 2000)),
        "native": dicom_folder(root / "native", lambda path: write_claim(path, 60000, 60000)),
        "rle": dicom_folder(root / "rle", lambda path: write_claim(path, 60000, 60000, RLELossless)),
        "deflated": dicom_folder(root / "deflated", lambda path: write_deflated_zeros(path, 60000, 60000)),
        "outgrown": dicom_folder(root / "outgrown", lambda path: write_deflated_zeros(
            path, 2000, 2000, pixel_bytes=1_800_000_000)),
    }


@pytest.fixture(scope="module")
def outcomes(bombs):
    cases = {case: (kind, str(bombs[name]), budget) for case, (kind, name, budget, _) in BOMBS.items()}
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(ceiling=CEILING)], input=json.dumps(cases), capture_output=True,
        text=True, cwd=REPOSITORY, env={"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"}, timeout=120)
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout)


def test_bombs_are_small_files(bombs):
    def size(name):
        path = bombs[name]
        return (next(path.iterdir()) if path.is_dir() else path).stat().st_size

    assert size("header.nii.gz") < 200 and size("header.npy") < 200 and size("zeros.nii.gz") < 2**21
    assert size("native") < 2000 and size("rle") < 2000
    assert 3.4e6 < size("deflated") < 3.6e6  # the 3.5 MB that inflates to 3.6 GB


@pytest.mark.parametrize("case", BOMBS)
def test_bomb_ends_in_a_clear_error_under_a_memory_ceiling(outcomes, case):
    kind, message = outcomes[case]
    assert kind == "InputError", f"{kind}: {message}"
    assert re.search(BOMBS[case][3], message), message
    assert UID_NAME not in message


def test_reading_every_bomb_took_little_memory(outcomes):
    assert outcomes["max_rss_mb"] < 400


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
