"""One patient's review images and attention rows, in a worker process of the review.

Reading each patient's CT series and writing its PNGs took most of the review's time
in one process, and the patients are independent. Kept free of TensorFlow and Keras, so
a worker spawned by `experiments.cv` starts in about a second (one spawned by
`python -m explain.review` also imports that module, and with it TensorFlow).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from explain import secondary_capture
from explain.attention import attention, mask_on_input
from explain.overlay import overlay_pair
from explain.volumes import map_volume, write_nifti, write_parametric_map
from vfrac.cohort import LABELS  # by class index, as explain.cam.called_classes gives them: 1 is malignant
from vfrac.data.crops import input_to_slice
from vfrac.io.volume import load_mask, load_volume


@dataclass(frozen=True)
class RenderJob:
    """What drawing one patient's explained slices needs: plain values, so it travels to a worker."""

    patient: object  # vfrac.cohort.Patient
    fold: int
    chosen: list  # [(slice, probability)], most probable first
    boxes: np.ndarray  # the crops' ROI squares (y0, x0, size) on their slices
    context: float
    cache_size: int
    bone: np.ndarray  # (n, S, S) bone-window view of each network input
    classes: np.ndarray  # per slice the class its call was (1 malignant, 0 benign)
    maps: dict  # method -> (n, S, S) maps of the evidence for the call
    other: dict  # method -> (n, S, S) maps of the evidence for the other class
    shares: list  # per slice: the attribution's share of (z-1, z, z+1)
    size: int  # the network input's side
    out: Path
    dicom: bool


@dataclass(frozen=True)
class Folders:
    """Where one patient's drawings go: NIfTI maps, PNG overlays and, when DICOM is asked for, the DICOM objects."""

    maps: Path
    overlays: Path
    dicom: Path | None = None


@dataclass(frozen=True)
class Drawn:
    """What `draw` wrote: each method's map volumes, and per slice its overlay PNGs (crop, whole slice) by method,
    of the call and of the other class."""

    maps: dict  # method -> NIfTI path
    dicom_maps: dict  # method -> DICOM parametric map path (methods whose maps are all zero have none)
    overlays: list  # per slice: method -> (crop PNG, slice PNG)
    other_maps: dict  # method -> NIfTI path of the other class's maps
    other_overlays: list  # per slice: method -> (crop PNG, slice PNG) of the other class


def draw(volume, patient_id: str, chosen: list, classes, maps: dict, other: dict, bone: np.ndarray,
         transforms: list, folders: Folders, source=None) -> Drawn:
    """The maps of one patient's chosen [(slice, probability)] placed on its CT grid and drawn over its slices.

    `maps` explain each slice's call (`classes`: 1 malignant, 0 benign), `other` the other class, so a reader
    sees the evidence a call went against. The single place overlays are drawn, for the review and for
    `experiments.predict`. Only the call's maps become DICOM objects: pseudonymous, or, given `source` (an
    explain.source_study.SourceStudy), filed with the CT's study.
    """
    slices = [z for z, _ in chosen]
    written, dicom_maps, other_written = {}, {}, {}
    for method, method_maps in maps.items():  # each method's maps on the CT's grid, to open over it
        placed = map_volume(volume.shape, slices, method_maps, transforms)
        written[method] = write_nifti(folders.maps / f"{method}.nii.gz", placed, volume.affine)
        other_written[method] = write_nifti(folders.maps / f"{method}_other.nii.gz",
                                            map_volume(volume.shape, slices, other[method], transforms),
                                            volume.affine)
        if folders.dicom is not None and placed.any():
            dicom_maps[method] = write_parametric_map(folders.dicom / "maps" / f"{method}.dcm", patient_id, placed,
                                                      volume.affine, method, source)
    overlays, other_overlays, captures, captured_slices = [], [], [], []
    for k, (z, p) in enumerate(chosen):
        overlays.append({})
        other_overlays.append({})
        call, against = LABELS[classes[k]], LABELS[1 - classes[k]]
        for method, method_maps in maps.items():
            crop_png, slice_png, whole = overlay_pair(folders.overlays, patient_id, method, z, p, method_maps[k],
                                                      bone[k], volume.hu[z], transforms[k], call)
            overlays[k][method] = (crop_png, slice_png)
            captures.append((f"{method} slice {z}", whole))
            captured_slices.append(z)
            other_overlays[k][method] = overlay_pair(folders.overlays, patient_id, method, z, p, other[method][k],
                                                     bone[k], volume.hu[z], transforms[k], against, called=False)[:2]
    if folders.dicom is not None:
        secondary_capture.write_series(folders.dicom, patient_id, captures, source=source, slices=captured_slices)
    return Drawn(written, dicom_maps, overlays, other_written, other_overlays)


def render(job: RenderJob) -> tuple[list[dict], list[dict]]:
    """(attention rows, the page's entry of each slice) for one patient; writes its drawings under job.out."""
    pid, explained = job.patient.patient_id, Path(job.out) / "explain"
    volume = load_volume(job.patient.ct)
    masks = {name: load_mask(path, volume) != 0 for name, path in job.patient.masks.items()}
    transforms = [input_to_slice(box, job.context, job.cache_size, job.size) for box in job.boxes]
    folders = Folders(explained / "maps" / pid, explained / "overlays" / pid,
                      explained / "dicom" / pid if job.dicom else None)
    drawn = draw(volume, pid, job.chosen, job.classes, job.maps, job.other, job.bone, transforms, folders)
    rows, shown_slices = [], []
    for k, (z, p) in enumerate(job.chosen):
        shown = {"slice": z, "probability": p, "call": LABELS[job.classes[k]], "images": drawn.overlays[k],
                 "other": drawn.other_overlays[k], "attention": {}, "attribution": job.shares[k]}
        for method, method_maps in job.maps.items():
            for feature, mask in masks.items():
                measured = attention(method_maps[k], mask_on_input(mask[z], transforms[k], job.size))
                rows.append({"patient_id": pid, "fold": job.fold, "slice": z, "method": method,
                             "feature": feature} | measured)
                shown["attention"][(method, feature)] = measured
        shown_slices.append(shown)
    return rows, shown_slices


def renderer(workers: int):
    """A pool of `workers` spawned processes for `render` (a fork would copy TensorFlow's threads and locks)."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
