"""Grad-CAM maps as volumes on the CT's own grid, so they open over the CT in 3D Slicer or OHIF.

Each explained slice's map is placed on its full axial slice through the crop's box (the
same placement as the slice overlays, explain.overlay.cam_on_slice); slices without a map
are 0. Written as float32 NIfTI with the CT's geometry (its LPS affine turned to NIfTI's
RAS), so a viewer that loaded the DICOM series lays it over the right voxels; and with
--dicom as a DICOM Parametric Map.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, generate_uid

from explain.overlay import cam_on_slice
from explain.secondary_capture import BODY_PART
from vfrac.io.nifti import write_nifti as save


def map_volume(shape, slices, maps, transforms) -> np.ndarray:
    """(z, y, x) float32: map k placed on slice slices[k] through transforms[k]; 0 elsewhere."""
    volume = np.zeros(tuple(shape), np.float32)
    for z, cam, transform in zip(slices, maps, transforms, strict=True):
        placed, _ = cam_on_slice(cam, transform, volume.shape[1:])
        volume[int(z)] = np.maximum(volume[int(z)], placed)
    return volume


def write_nifti(path: Path, volume_zyx: np.ndarray, affine_lps_zyx: np.ndarray) -> Path:
    """The map volume as a NIfTI file (vfrac.io.nifti.write_nifti), its folder made first."""

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return save(path, volume_zyx, affine_lps_zyx)


def write_parametric_map(path: Path, patient_id: str, volume_zyx: np.ndarray, affine_lps_zyx: np.ndarray,
                         method: str, source_study=None) -> Path:
    """The map volume as a DICOM Parametric Map (highdicom), cropped to its non-zero extent.

    By default, as the Secondary Capture series, it is a new study whose only identity is
    the pseudonymous id: every UID is new and nothing is copied from the CT's headers, so
    it does not link to the CT's study in a PACS. Given the source study (a SourceStudy),
    it is a new series of the CT's study, in its frame of reference, referencing the CT
    slices it covers. Its planes carry the CT's positions and orientation, so a viewer
    that places images by geometry (3D Slicer) lays it over the CT.
    """
    import highdicom as hd  # here: it takes about a second to import, and only DICOM output needs it

    sources, cropped = _cropped_on_sources(patient_id, np.asarray(volume_zyx, np.float32), affine_lps_zyx,
                                           source_study, "the map")
    mapping = hd.pm.RealWorldValueMapping(lut_label=method[:16], lut_explanation=f"{method} map, 0 to 1",
                                          unit=codes.UCUM.NoUnits, value_range=(0.0, 1.0), slope=1, intercept=0)
    parametric_map = hd.pm.ParametricMap(
        sources, cropped, generate_uid(), 9001, generate_uid(), 1, manufacturer="vfrac",
        manufacturer_model_name="vfrac", software_versions="vfrac", device_serial_number="none",
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label=method.upper()[:16], content_description=f"vfrac {method} attention")
    return _save(parametric_map, path, f"vfrac {method} map")


def write_roi_seg(path: Path, patient_id: str, roi_zyx: np.ndarray, affine_lps_zyx: np.ndarray,
                  source_study=None) -> Path:
    """The ROI the model was given (the vertebra) as a DICOM SEG of one binary segment, cropped to its extent:
    pseudonymous, or, given the source study, a new series of the CT's study referencing its slices."""
    import highdicom as hd  # (see write_parametric_map)

    sources, cropped = _cropped_on_sources(patient_id, np.asarray(roi_zyx, np.uint8), affine_lps_zyx,
                                           source_study, "the ROI")
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="vertebra ROI", segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Vertebra, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        sources, cropped, hd.seg.SegmentationTypeValues.BINARY,
        [segment], generate_uid(), 9002, generate_uid(), 1, manufacturer="vfrac", manufacturer_model_name="vfrac",
        software_versions="vfrac", device_serial_number="none", content_description="vfrac ROI: the vertebra read")
    return _save(seg, path, "vfrac ROI (the vertebra read)")


def _cropped_on_sources(patient_id: str, array: np.ndarray, affine: np.ndarray, source_study, what: str):
    """(source CT headers, the array as an hd.Volume cropped to its non-zero extent): the CT's headers of the
    slices it covers given the source study, else one pseudonymous header."""
    import highdicom as hd  # (see write_parametric_map)

    present = np.argwhere(array)
    if not len(present):
        raise ValueError(f"{what} is empty: nothing to write")
    low, high = present.min(axis=0), present.max(axis=0) + 1
    if source_study is None:
        sources = [pseudonymous_source(patient_id, array.shape, affine)]
    else:
        sources = list(source_study.headers[low[0]:high[0]])
    volume = hd.Volume(array, np.asarray(affine, float), coordinate_system="PATIENT",
                       frame_of_reference_uid=sources[0].FrameOfReferenceUID)
    return sources, volume[low[0]:high[0], low[1]:high[1], low[2]:high[2]]


def _save(dataset, path: Path, description: str) -> Path:
    describe(dataset, description)
    dataset.BodyPartExamined = BODY_PART  # unpaired: no Laterality
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path)
    return Path(path)


def describe(dataset, description: str) -> None:
    """A series description and today's series date and time, as a PACS lists series by them."""
    now = datetime.datetime.now()
    dataset.SeriesDescription = description
    dataset.SeriesDate, dataset.SeriesTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def pseudonymous_source(patient_id: str, shape, affine: np.ndarray):
    """A header-only CT image in a new study: the patient and study modules the map copies, and the geometry."""

    source = Dataset()
    source.SOPClassUID, source.SOPInstanceUID, source.Modality = CTImageStorage, generate_uid(), "CT"
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
    source.FrameOfReferenceUID = generate_uid()
    source.PatientID, source.PatientName = patient_id, f"{patient_id}^"
    now = datetime.datetime.now()
    source.StudyDate, source.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for name in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(source, name, "")
    source.Rows, source.Columns = int(shape[1]), int(shape[2])
    row_step, column_step = np.linalg.norm(affine[:3, 1]), np.linalg.norm(affine[:3, 2])
    source.ImagePositionPatient = [float(v) for v in affine[:3, 3]]
    source.ImageOrientationPatient = [float(v) for v in np.r_[affine[:3, 2] / column_step, affine[:3, 1] / row_step]]
    source.PixelSpacing = [float(row_step), float(column_step)]
    source.SliceThickness = float(np.linalg.norm(affine[:3, 0]))
    return source
