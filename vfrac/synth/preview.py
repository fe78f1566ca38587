"""`python -m vfrac.synth.preview DIR --out preview.png`: look at a cohort before trusting it.

For a few patients of each class: the whole axial slice through the lesion, a zoom on
the target vertebra, and a sagittal reformat, in a bone window, with the ROI (white)
and each feature mask outlined in its colour. It reads the cohort through the same
loaders as any hospital cohort, so it also shows that the masks land on the CT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from vfrac.cohort import read_manifest
from vfrac.data.window import grey
from vfrac.io.volume import load_mask, load_volume

PANEL = 256
COLOURS = {  # BGR
    "soft_tissue_mass": (0, 165, 255),
    "bone_destruction": (0, 0, 255),
    "transverse_fracture_line": (0, 255, 0),
    "pedicle_involvement": (255, 0, 255),
    "posterior_wall_retropulsion": (255, 255, 0),
    "intravertebral_vacuum": (255, 0, 0),
}


def patient_row(patient) -> np.ndarray:
    """Three panels for one patient: axial slice, axial zoom, sagittal zoom."""
    volume = load_volume(patient.ct)
    roi = load_mask(patient.roi, volume) > 0
    masks = {name: load_mask(path, volume) > 0 for name, path in patient.masks.items()}
    lesion = np.zeros_like(roi)
    for mask in masks.values():
        lesion |= mask
    weight = lesion if lesion.any() else roi
    z = int(np.argmax(weight.sum(axis=(1, 2))))
    zs, ys, xs = np.nonzero(roi)
    cy, cx = int(ys.mean()), int(xs.mean())
    dz, dy, dx = volume.spacing
    half = int(round(45.0 / dy))  # a 9 cm square around the vertebra
    axial = _outlined(volume.hu[z], roi[z], {n: m[z] for n, m in masks.items()})
    whole = cv2.resize(axial, (PANEL, PANEL), interpolation=cv2.INTER_AREA)
    zoom = _crop(axial, cy, cx, half)
    column = [m[:, :, cx] for m in (roi, *masks.values())]
    sagittal = _outlined(volume.hu[:, :, cx], column[0], dict(zip(masks, column[1:], strict=True)))
    sagittal = cv2.resize(sagittal[::-1], (sagittal.shape[1], int(round(sagittal.shape[0] * dz / dy))),
                          interpolation=cv2.INTER_NEAREST)  # superior up, square pixels
    zc = sagittal.shape[0] - 1 - int(round(zs.mean() * dz / dy))
    row = np.concatenate([whole, zoom, _crop(sagittal, zc, cy, half)], axis=1)
    present = [name for name, value in patient.features.items() if value]
    text = f"{patient.patient_id} {patient.label}: " + (", ".join(present) or "no feature")
    cv2.putText(row, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return row


def _outlined(hu: np.ndarray, roi: np.ndarray, masks: dict) -> np.ndarray:
    image = cv2.cvtColor(grey(hu), cv2.COLOR_GRAY2BGR)
    for mask, colour in [(roi, (255, 255, 255))] + [(m, COLOURS.get(n, (0, 255, 255))) for n, m in masks.items()]:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(image, contours, -1, colour, 1)
    return image


def _crop(image: np.ndarray, cy: int, cx: int, half: int) -> np.ndarray:
    padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    window = padded[cy:cy + 2 * half, cx:cx + 2 * half]
    return cv2.resize(window, (PANEL, PANEL), interpolation=cv2.INTER_NEAREST)


def legend(width: int) -> np.ndarray:
    """Feature names in their outline colours, wrapped to the image width."""
    lines, x, y = [], 6, 15
    for name, colour in [("ROI", (255, 255, 255)), *COLOURS.items()]:
        (w, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        if x + w > width - 6:
            x, y = 6, y + 16
        lines.append((name, colour, x, y))
        x += w + 14
    strip = np.zeros((y + 8, width, 3), np.uint8)
    for name, colour, x, y in lines:
        cv2.putText(strip, name, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return strip


def render_preview(manifest: Path, per_class: int = 3) -> np.ndarray:
    patients = read_manifest(manifest).patients
    chosen = [p for label in ("benign", "malignant") for p in [q for q in patients if q.label == label][:per_class]]
    rows = [patient_row(p) for p in chosen]
    return np.concatenate([legend(rows[0].shape[1]), *rows], axis=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vfrac.synth.preview", description=__doc__.splitlines()[0])
    parser.add_argument("cohort", type=Path, help="cohort folder (with manifest.csv) or the manifest itself")
    parser.add_argument("--out", type=Path, default=Path("preview.png"))
    parser.add_argument("--per-class", type=int, default=3, help="patients shown per class (default: %(default)s)")
    args = parser.parse_args(argv)
    manifest = args.cohort / "manifest.csv" if args.cohort.is_dir() else args.cohort
    try:
        image = render_preview(manifest, args.per_class)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cv2.imwrite(str(args.out), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out} ({image.shape[1]} x {image.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
