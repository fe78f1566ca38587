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
    maps: dict  # method -> (n, S, S) maps
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
    """What `draw` wrote: each method's map volumes, and per slice its overlay PNGs (crop, whole slice) by method."""

    maps: dict  # method -> NIfTI path
    dicom_maps: dict  # method -> DICOM parametric map path (methods whose maps are all zero have none)
    overlays: list  # per slice: method -> (crop PNG, slice PNG)


def draw(volume, patient_id: str, chosen: list, maps: dict, bone: np.ndarray, transforms: list,
         folders: Folders, source=None) -> Drawn:
    """The maps of one patient's chosen [(slice, probability)] placed on its CT grid and drawn over its slices.

    The single place overlays are drawn, for the review and for `experiments.predict`. The DICOM objects are
    pseudonymous, or, given `source` (an explain.source_study.SourceStudy), filed with the CT's study.
    """
    written, dicom_maps = {}, {}
    for method, method_maps in maps.items():  # each method's maps on the CT's grid, to open over it
        placed = map_volume(volume.shape, [z for z, _ in chosen], method_maps, transforms)
        written[method] = write_nifti(folders.maps / f"{method}.nii.gz", placed, volume.affine)
        if folders.dicom is not None and placed.any():
            dicom_maps[method] = write_parametric_map(folders.dicom / "maps" / f"{method}.dcm", patient_id, placed,
                                                      volume.affine, method, source)
    overlays, captures, captured_slices = [], [], []
    for k, (z, p) in enumerate(chosen):
        overlays.append({})
        for method, method_maps in maps.items():
            crop_png, slice_png, whole = overlay_pair(folders.overlays, patient_id, method, z, p, method_maps[k],
                                                      bone[k], volume.hu[z], transforms[k])
            overlays[k][method] = (crop_png, slice_png)
            captures.append((f"{method} slice {z}", whole))
            captured_slices.append(z)
    if folders.dicom is not None:
        secondary_capture.write_series(folders.dicom, patient_id, captures, source=source, slices=captured_slices)
    return Drawn(written, dicom_maps, overlays)


def render(job: RenderJob) -> tuple[list[dict], list[dict]]:
    """(attention rows, the page's entry of each slice) for one patient; writes its drawings under job.out."""
    pid, explained = job.patient.patient_id, Path(job.out) / "explain"
    volume = load_volume(job.patient.ct)
    masks = {name: load_mask(path, volume) != 0 for name, path in job.patient.masks.items()}
    transforms = [input_to_slice(box, job.context, job.cache_size, job.size) for box in job.boxes]
    folders = Folders(explained / "maps" / pid, explained / "overlays" / pid,
                      explained / "dicom" / pid if job.dicom else None)
    drawn = draw(volume, pid, job.chosen, job.maps, job.bone, transforms, folders)
    rows, shown_slices = [], []
    for k, (z, p) in enumerate(job.chosen):
        shown = {"slice": z, "probability": p, "images": drawn.overlays[k], "attention": {},
                 "attribution": job.shares[k]}
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
