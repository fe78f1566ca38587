"""One patient's review images and attention rows, in a worker process of the review.

Reading each patient's CT series and writing its PNGs took most of the review's time
in one process, and the patients are independent. Kept free of TensorFlow and Keras, so
a worker spawned by `experiments.cv` starts in about a second (one spawned by
`python -m explain.review` also imports that module, and with it TensorFlow).
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from explain.attention import attention, mask_on_input
from explain.overlay import overlay_pair
from explain.volumes import map_volume, write_nifti, write_parametric_map


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


def render(job: RenderJob) -> tuple[list[dict], list[dict]]:
    """(attention rows, the page's entry of each slice) for one patient; writes its overlays under job.out."""
    from explain import secondary_capture
    from vfrac.data.crops import input_to_slice
    from vfrac.io.volume import load_mask, load_volume

    pid = job.patient.patient_id
    volume = load_volume(job.patient.ct)
    masks = {name: load_mask(path, volume) != 0 for name, path in job.patient.masks.items()}
    rows, shown_slices, captures = [], [], []
    transforms = [input_to_slice(box, job.context, job.cache_size, job.size) for box in job.boxes]
    for method, method_maps in job.maps.items():  # each method's maps on the CT's grid, to open over it
        placed = map_volume(volume.shape, [z for z, _ in job.chosen], method_maps, transforms)
        write_nifti(Path(job.out) / "explain" / "maps" / pid / f"{method}.nii.gz", placed, volume.affine)
        if job.dicom and placed.any():
            write_parametric_map(Path(job.out) / "explain" / "dicom" / pid / "maps" / f"{method}.dcm", pid, placed,
                                 volume.affine, method)
    for k, (z, p) in enumerate(job.chosen):
        transform = transforms[k]
        shown = {"slice": z, "probability": p, "images": {}, "attention": {}, "attribution": job.shares[k]}
        for method, method_maps in job.maps.items():
            cam = method_maps[k]
            crop_png, slice_png, whole = overlay_pair(Path(job.out) / "explain" / "overlays" / pid, pid, method, z,
                                                      p, cam, job.bone[k], volume.hu[z], transform)
            shown["images"][method] = (crop_png, slice_png)
            captures.append((f"{method} slice {z}", whole))
            for feature, mask in masks.items():
                measured = attention(cam, mask_on_input(mask[z], transform, job.size))
                rows.append({"patient_id": pid, "fold": job.fold, "slice": z, "method": method,
                             "feature": feature} | measured)
                shown["attention"][(method, feature)] = measured
        shown_slices.append(shown)
    if job.dicom:
        secondary_capture.write_series(Path(job.out) / "explain" / "dicom" / pid, pid, captures)
    return rows, shown_slices


def renderer(workers: int):
    """A pool of `workers` spawned processes for `render` (a fork would copy TensorFlow's threads and locks)."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
