"""DICOM series reading: order, rescale, grouping, skipping, geometry checks, decoders."""

import logging
import re
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from tests.dicom_factory import ct_slice, slice_positions, write_enhanced, write_series
from vfrac.errors import InputError
from vfrac.io.volume import load_volume


def pydicom_file(name):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom does not ship {name}")
    return path


def as_ct(name, folder):
    """A copy of one of pydicom's MR files relabelled as CT, in its own encoding."""
    ds = pydicom.dcmread(pydicom_file(name))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.save_as(folder / name)
    return folder / name


@pytest.fixture
def stored():
    """Stored values (z, y, x) for a 6-slice series, all distinct per slice."""
    rng = np.random.default_rng(7)
    return rng.integers(0, 2000, size=(6, 12, 16), dtype=np.int16)


def test_ct_small_hu_of_known_pixels():
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    raw = np.frombuffer(ds.PixelData, "<i2").reshape(128, 128)  # decoded by hand
    assert (raw[0, 0], raw[64, 64], float(ds.RescaleIntercept)) == (175, 1928, -1024.0)
    volume = load_volume(path)
    assert volume.shape == (1, 128, 128)
    assert volume.hu[0, 0, 0] == 175 - 1024 == -849
    assert volume.hu[0, 64, 64] == 1928 - 1024 == 904
    assert volume.spacing[1:] == pytest.approx((0.661468, 0.661468))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian],
                         ids=lambda s: s.name)
def test_compressed_ct_decodes_to_the_same_hu(tmp_path, syntax):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    if syntax.is_compressed:
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(tmp_path / "compressed.dcm")
    assert pydicom.dcmread(tmp_path / "compressed.dcm").file_meta.TransferSyntaxUID == syntax
    original = load_volume(pydicom_file("CT_small.dcm"))
    assert np.array_equal(load_volume(tmp_path / "compressed.dcm").hu, original.hu)


@pytest.mark.parametrize("twin", [
    "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
])
def test_pydicom_encoded_twins_decode_identically(tmp_path, twin):
    """pydicom's MR twins, relabelled CT (MR itself is refused), in every encoding."""
    reference = load_volume(as_ct("MR_small.dcm", tmp_path))
    volume = load_volume(as_ct(twin, tmp_path))
    assert np.array_equal(volume.hu, reference.hu)
    assert np.allclose(volume.affine, reference.affine)


def test_shuffled_renamed_files_load_to_the_identical_volume(tmp_path, stored):
    write_series(tmp_path / "a", stored)
    names = [f"{n}.dcm" for n in ("zz", "b", "x1", "a", "q", "c")]  # file order != slice order
    write_series(tmp_path / "b", stored, names=names)
    for path in (tmp_path / "b").iterdir():  # InstanceNumber no longer tells the order
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 100 - ds.InstanceNumber if ds.InstanceNumber % 2 else ds.InstanceNumber
        ds.save_as(path)
    a, b = load_volume(tmp_path / "a"), load_volume(tmp_path / "b")
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.affine, b.affine)
    assert np.array_equal(a.hu, stored.astype(np.float32) - 1024)


def test_slices_sorted_along_the_normal_for_a_feet_first_series(tmp_path, stored):
    # Positions fall as the file index rises: slice 0 must still be the lowest.
    write_series(tmp_path, stored, dz=-2.0)
    volume = load_volume(tmp_path)
    assert np.array_equal(volume.hu, stored[::-1].astype(np.float32) - 1024)
    assert volume.affine[2, 0] == pytest.approx(2.0)
    assert volume.affine[2, 3] == pytest.approx(100.0 - 10.0)


def test_rescale_slope_and_intercept_exact_and_per_slice(tmp_path, stored):
    write_series(tmp_path, stored, slope=2.0, intercept=-1024.0)
    path = sorted(tmp_path.iterdir())[3]
    ds = pydicom.dcmread(path)
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1000.0
    ds.save_as(path)
    hu = load_volume(tmp_path).hu
    assert np.array_equal(hu[0], stored[0] * 2.0 - 1024)
    assert np.array_equal(hu[3], stored[3] * 0.5 - 1000)
    assert hu.dtype == np.float32


def test_affine_maps_voxels_to_patient_positions(tmp_path, stored):
    write_series(tmp_path, stored, spacing=(0.7, 0.5))
    volume = load_volume(tmp_path)
    assert volume.spacing == pytest.approx((2.0, 0.7, 0.5))
    # voxel (z=2, row=3, column=4) -> IPP of slice 2 + 4 columns along x + 3 rows along y
    assert volume.affine @ [2, 3, 4, 1] == pytest.approx([-64 + 4 * 0.5, -80 + 3 * 0.7, 104, 1])


def test_missing_middle_slice_is_a_gap_error(tmp_path, stored):
    paths = write_series(tmp_path, stored)
    paths[3].unlink()
    with pytest.raises(InputError, match=r"gap of 4 mm between file 3 of 5 .* and file 4 of 5 .*1 slice\(s\) missing"):
        load_volume(tmp_path)


def test_irregular_spacing_is_an_error(tmp_path, stored):
    paths = write_series(tmp_path, stored)
    ds = pydicom.dcmread(paths[3])
    ds.ImagePositionPatient[2] += 0.4
    ds.save_as(paths[3])
    with pytest.raises(InputError, match="irregular slice spacing"):
        load_volume(tmp_path)


def test_gantry_tilt_is_an_error(tmp_path, stored):
    paths = write_series(tmp_path, stored)
    for z, path in enumerate(paths):  # shift each slice 0.5 mm in y: about 14 degrees
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient[1] += 0.5 * z
        ds.save_as(path)
    with pytest.raises(InputError, match=r"14\.0 degrees off their normal \(gantry tilt"):
        load_volume(tmp_path)


def test_mixed_orientations_in_one_series_is_an_error(tmp_path, stored):
    paths = write_series(tmp_path, stored)
    ds = pydicom.dcmread(paths[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9848, -0.1736]
    ds.save_as(paths[2])
    with pytest.raises(InputError, match="mixed slice orientations.*file 3 of 6 has"):
        load_volume(tmp_path)


def test_two_series_in_one_folder_are_listed_and_one_can_be_picked(tmp_path, stored):
    write_series(tmp_path, stored, series_uid="1.2.3.1", series_number=2, description="AX BONE")
    write_series(tmp_path, stored[:4] + 5, series_uid="1.2.3.2", series_number=3,
                 description="AX SOFT", names=[f"soft{z}.dcm" for z in range(4)])
    with pytest.raises(InputError) as caught:
        load_volume(tmp_path)
    message = str(caught.value)
    assert 'holds 2 series' in message
    assert 'series 2 "AX BONE": 6 slices' in message and 'series 3 "AX SOFT": 4 slices' in message
    assert "1.2.3.1" not in message  # UIDs never reach messages
    assert load_volume(tmp_path, series=3).shape == (4, 12, 16)
    assert load_volume(tmp_path, series="AX BONE").shape == (6, 12, 16)
    with pytest.raises(InputError, match="no series match series=9"):
        load_volume(tmp_path, series=9)


def test_empty_series_uid_groups_by_geometry(tmp_path, stored):
    write_series(tmp_path, stored, series_uid="")
    assert load_volume(tmp_path).shape == (6, 12, 16)
    write_series(tmp_path, stored[:, :8], series_uid="", names=[f"small{z}.dcm" for z in range(6)])
    with pytest.raises(InputError, match=r"holds 2 series.*6 slices of 12 x 16.*6 slices of 8 x 16"):
        load_volume(tmp_path)


def test_exact_duplicates_are_used_once_and_different_ones_refused(tmp_path, stored):
    paths = write_series(tmp_path, stored)
    shutil.copy(paths[2], tmp_path / "copy_of_2.dcm")
    assert load_volume(tmp_path).shape == (6, 12, 16)
    ds = pydicom.dcmread(paths[2])
    ds.PixelData = (stored[2] + 1).astype("<i2").tobytes()
    ds.save_as(tmp_path / "other_at_2.dcm")
    with pytest.raises(InputError, match="different images at the same position"):
        load_volume(tmp_path)


def test_non_image_objects_localizers_and_other_files_are_skipped_and_reported(tmp_path, stored, caplog):
    write_series(tmp_path, stored)
    scout = ct_slice(stored[0][:, :10], (0, 0, 0), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    scout.save_as(tmp_path / "scout.dcm", enforce_file_format=True)
    shutil.copy(pydicom_file("liver_1frame.dcm"), tmp_path / "seg.dcm")  # a SEG object
    shutil.copy(pydicom_file("test-SR.dcm"), tmp_path / "sr.dcm")
    shutil.copy(pydicom_file("rtstruct.dcm"), tmp_path / "rtstruct.dcm")  # no file meta
    (tmp_path / "notes.txt").write_text("scanned at 3 am")
    (tmp_path / "DICOMDIR.bak").write_bytes(b"\x00" * 10)
    with caplog.at_level(logging.INFO, logger="vfrac.io.series"):
        volume = load_volume(tmp_path)
    assert volume.shape == (6, 12, 16)
    report = caplog.text
    assert "skipped 6 file(s)" in report
    assert "2 x not a DICOM file" in report and "1 x localizer (scout) image" in report
    assert "Segmentation Storage" in report and "Comprehensive SR Storage" in report
    assert "RT Structure Set Storage without file meta" in report


def test_enhanced_multiframe_ct_reads_like_the_series(tmp_path, stored):
    slopes = [1.0, 2.0, 1.0, 0.5, 1.0, 1.0]
    path = write_enhanced(tmp_path / "enhanced.dcm", stored, order=[3, 0, 5, 1, 4, 2], slopes=slopes)
    volume = load_volume(path)
    expected = stored * np.array(slopes)[:, None, None] - 1024
    assert np.array_equal(volume.hu, expected.astype(np.float32))
    write_series(tmp_path / "series", stored)
    assert np.allclose(volume.affine, load_volume(tmp_path / "series").affine)
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(path, folder)
    assert np.array_equal(load_volume(folder).hu, volume.hu)


def test_missing_decoder_names_the_package(monkeypatch, tmp_path):
    from pydicom.pixels.decoders.base import Decoder

    path = as_ct("MR_small_jp2klossless.dcm", tmp_path)
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(InputError, match="pip install pylibjpeg pylibjpeg-openjpeg"):
        load_volume(path)


def _ct_file(tmp_path, edit):
    ds = ct_slice(np.zeros((8, 8), np.int16), slice_positions(1)[0])
    edit(ds)
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _huge(ds):
    ds.Rows = ds.Columns = 60000  # 7 GB claimed, 128 bytes present


def _no_pixels(ds):
    del ds.PixelData


def _bad_spacing(ds):
    ds["PixelSpacing"].VR = "LO"
    ds.PixelSpacing = "wide"


def _bad_frames(ds):
    ds.add_new("NumberOfFrames", "LO", "1A")  # pydicom will not write an invalid IS


def _no_position(ds):
    del ds.ImagePositionPatient


BAD_FILES = [
    ("MR_small.dcm", r"not a CT image \(MR Image Storage object, is MR, not CT\)"),
    ("MR_truncated.dcm", r"not a CT image \(MR Image Storage object, is MR, not CT\)"),
    ("no_meta.dcm", r"not a CT image \(not a DICOM file\)"),  # no meta, misaligned
    ("ExplVR_LitEndNoMeta.dcm", r"not a CT image \(RT Ion Plan Storage without file meta"),
    ("badVR.dcm", r"not a CT image \(RT Dose Storage object\)"),
    ("rtplan_truncated.dcm", r"not a CT image \(RT Plan Storage object\)"),
    ("meta_missing_tsyntax.dcm", r"no Transfer Syntax UID \(0002,0010\)"),
    ("liver_1frame.dcm", r"not a CT image \(Segmentation Storage object\)"),
]


@pytest.mark.parametrize("name, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_pydicom_malformed_files_raise_input_error(name, message):
    path = pydicom_file(name)
    with pytest.raises(InputError, match=message) as caught:
        load_volume(path)
    assert name in str(caught.value)


def test_pixel_data_cut_short_is_a_truncated_file(tmp_path):
    path = as_ct("MR_truncated.dcm", tmp_path)  # its pixel data lacks 62 bytes
    with pytest.raises(InputError, match=r"pixel data is 8,130 bytes, expected 8,192 for 1 x 64 x 64 x 16 bit"):
        load_volume(path)


@pytest.mark.parametrize("edit, message", [
    (_huge, r"claims 1 x 60000 x 60000 voxels \(3.6e9\), over the budget of 1.1e9 \(VFRAC_MAX_VOXELS"),
    (_no_pixels, r"damaged DICOM file: it ends inside its header, before any pixel data \(truncated\?\)"),
    (_bad_spacing, "PixelSpacing has an invalid value"),
    (_bad_frames, "NumberOfFrames has an invalid value '1A'"),
    (_no_position, "ImagePositionPatient is missing"),
], ids=["huge-rows-columns", "no-pixel-data", "invalid-pixel-spacing", "invalid-frames", "no-position"])
def test_broken_ct_files_raise_input_error_naming_the_file(tmp_path, monkeypatch, edit, message):
    monkeypatch.delenv("VFRAC_MAX_VOXELS", raising=False)
    path = _ct_file(tmp_path, edit)
    with pytest.raises(InputError, match=message) as caught:
        load_volume(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path} (file 1 of 1): ")
    assert path.name not in str(caught.value)
    with pytest.raises(InputError, match=message) as caught:
        load_volume(path)  # a file the user names is named by its path
    assert str(caught.value).startswith(f"{path}: ")


def test_empty_folder_and_non_dicom_files(tmp_path):
    with pytest.raises(InputError, match="no CT image among 0 file"):
        load_volume(tmp_path)
    text = tmp_path / "IM0001.dcm"
    text.write_text("patient_id,label\nP1,benign\n")
    with pytest.raises(InputError, match=r"IM0001.dcm: not a CT image \(not a DICOM file\)"):
        load_volume(text)
    with pytest.raises(InputError, match="no CT image among 1 file.*1 x not a DICOM file"):
        load_volume(tmp_path)
    with pytest.raises(InputError, match="no such file or folder"):
        load_volume(tmp_path / "absent")


def _relabel(paths, sop_class, modality):
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.Modality = modality
        ds.save_as(path)


@pytest.mark.parametrize("sop_class, modality, what", [
    (MRImageStorage, "MR", "MR Image Storage object"),
    (EnhancedMRImageStorage, "MR", "Enhanced MR Image Storage object"),
    (CTImageStorage, "MR", "CT Image Storage object"),  # the class says CT, the modality MR
    ("", "MR", "no SOP Class UID object"),
], ids=["mr", "enhanced-mr", "ct-class-mr-modality", "no-class"])
def test_an_mr_series_is_refused_as_not_ct(tmp_path, stored, sop_class, modality, what):
    _relabel(write_series(tmp_path / "mr", stored), sop_class, modality)
    with pytest.raises(InputError, match=rf"mr: no CT image among 6 file\(s\); skipped 6 x {what}, is MR, not CT$"):
        load_volume(tmp_path / "mr")
    with pytest.raises(InputError, match=rf"IM0000.dcm: not a CT image \({what}, is MR, not CT\)"):
        load_volume(tmp_path / "mr" / "IM0000.dcm")


def test_mr_images_beside_a_ct_series_are_skipped(tmp_path, stored, caplog):
    write_series(tmp_path, stored)
    mr = write_series(tmp_path, stored[:3], series_uid="1.2.3.9", names=["mr0.dcm", "mr1.dcm", "mr2.dcm"])
    _relabel(mr, MRImageStorage, "MR")
    with caplog.at_level(logging.INFO, logger="vfrac.io.series"):
        assert np.array_equal(load_volume(tmp_path).hu, stored - 1024.0)
    assert "3 x MR Image Storage object, is MR, not CT" in caplog.text


def test_a_file_cut_anywhere_is_reported_damaged_never_skipped(tmp_path, stored):
    """A cut inside the header used to read as "has no pixel data", or as another object."""
    whole = write_series(tmp_path / "whole", stored[:1])[0].read_bytes()
    cut = tmp_path / "cut.dcm"
    for size in range(133, len(whole), 3):  # from the 'DICM' prefix to the last pixel byte
        cut.write_bytes(whole[:size])
        with pytest.raises(InputError) as caught:
            load_volume(cut)
        message = str(caught.value)
        assert re.search(r"damaged DICOM file|pixel data is [\d,]+ bytes, expected 384 .* \(truncated file\?\)",
                         message), (size, message)
        assert "not a CT image" not in message and "no pixel data" not in message, (size, message)


def test_a_file_cut_inside_its_header_is_damaged_in_a_series(tmp_path, stored):
    paths = write_series(tmp_path, stored)
    header_end = len(paths[2].read_bytes()) - stored[0].nbytes - 12
    paths[2].write_bytes(paths[2].read_bytes()[:header_end - 30])  # cut inside a header value
    with pytest.raises(InputError, match=rf"^{re.escape(str(tmp_path))} \(file 3 of 6\): damaged DICOM file: it "
                                         r"ends inside its header, before any pixel data \(truncated\?\)$"):
        load_volume(tmp_path)


def test_uid_file_names_never_reach_messages_or_logs(tmp_path, stored, caplog):
    names = [f"{generate_uid()}.dcm" for _ in stored]
    paths = write_series(tmp_path, stored, names=names)
    (tmp_path / f"{generate_uid()}.txt").write_text("notes")
    uids = [path.stem for path in tmp_path.iterdir()]
    messages = []
    ds = pydicom.dcmread(paths[4])
    del ds.ImagePositionPatient
    ds.save_as(paths[4])
    with caplog.at_level(logging.DEBUG, logger="vfrac"), pytest.raises(InputError) as caught:
        load_volume(tmp_path)
    messages.append(str(caught.value))
    paths[4].unlink()  # now a gap, between two UID-named files
    with caplog.at_level(logging.DEBUG, logger="vfrac"), pytest.raises(InputError) as caught:
        load_volume(tmp_path)
    messages.append(str(caught.value))
    assert re.search(r" \(file \d of 7\): ImagePositionPatient is missing$", messages[0])
    assert re.search(r"gap of 4 mm between file \d of 6 .* and file \d of 6 ", messages[1])
    for text in messages + [caplog.text]:
        assert not any(uid in text for uid in uids), text
