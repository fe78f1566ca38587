"""Render a synthetic lumbar / lower thoracic CT in HU, with its ROI and feature masks.

The trunk (skin, fat, muscle, vessels, bowel) does not change along z and is drawn
once; the spine is drawn per slice inside a patch around it, from cross-sections
computed once and switched on by each structure's z-range. Each slice averages three
samples across its thickness (partial volume in z), then gets the scanner's blur and
correlated noise. Lesions of the target vertebra come from `vfrac.synth.lesions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

import vfrac.synth.lesions as lesions
from vfrac.synth.params import Lesion, Scan
from vfrac.synth.shapes import box, ellipse, mix, ramp, smooth_noise

HU = {"air": -1000.0, "fat": -100.0, "skin": 30.0, "muscle": 45.0, "blood": 40.0, "organ": 35.0,
      "gas": -900.0, "disc": 85.0, "csf": 12.0, "table": 120.0}
SUBSAMPLES = (-1 / 3, 0.0, 1 / 3)  # across the slice thickness


@dataclass
class Rendered:
    """HU of the whole CT, and masks on the spine patch (rows, columns from `origin`)."""

    hu: np.ndarray  # (z, y, x) int16
    roi: np.ndarray  # (z, h, w) uint8, on the patch
    masks: dict[str, np.ndarray]  # feature -> (z, h, w) uint8, on the patch
    origin: tuple[int, int]  # (row, column) of the patch's first pixel


class Spine:
    """Cross-sections of a vertebra (mm coordinates u lateral, v posterior) on the patch."""

    def __init__(self, scan: Scan, u: np.ndarray, v: np.ndarray):
        p, w, d, r = scan.pixel_spacing, scan.body_half_width, scan.body_half_depth, scan.canal_radius
        self.u, self.v, self.pixel = u, v, p
        notch = 1.0 - ellipse(u, v, 0.45 * w, 0.45 * w, p, cv=d + 0.45 * w - 2.5)  # posterior concavity
        self.body = ellipse(u, v, w, d, p) * notch
        c = scan.cortex
        self.cancellous = ellipse(u, v, w - c, d - c, p) * (1.0 - ellipse(u, v, 0.45 * w + c, 0.45 * w + c, p,
                                                                            cv=d + 0.45 * w - 2.5))
        self.disc = ellipse(u, v, 1.03 * w, 1.03 * d, p) * notch
        self.canal_v = d + r + 1.5
        self.canal = ellipse(u, v, r, 0.85 * r, p, cv=self.canal_v)
        width = 0.35 * r + 3.0
        self.pedicle_left = box(u, v, r + 0.5, r + 0.5 + width, d - 6, self.canal_v + 0.2 * r, p)
        self.pedicle_right = box(u, v, -r - 0.5 - width, -r - 0.5, d - 6, self.canal_v + 0.2 * r, p)
        ring = ellipse(u, v, r + 6, 0.85 * r + 6, p, cv=self.canal_v) - ellipse(u, v, r + 0.5, 0.85 * r + 0.5, p,
                                                                               cv=self.canal_v)
        self.lamina = np.clip(ring, 0, 1) * ramp(v, self.canal_v - 1.0, p)
        tip = self.canal_v + 0.85 * r
        self.spinous = box(u, v, -3.0, 3.0, tip + 2, tip + 34, p)
        self.transverse = np.maximum(box(u, v, r + 3, r + 28, self.canal_v - 5, self.canal_v + 1, p),
                                     box(u, v, -r - 28, -r - 3, self.canal_v - 5, self.canal_v + 1, p))

    def posterior(self, dz: float, height: float) -> np.ndarray:
        """Occupancy of the posterior elements at dz mm from the body's centre."""
        t = dz / (height / 2)
        parts = [np.zeros_like(self.body)]
        if -0.1 <= t <= 0.9:
            parts.append(np.maximum(self.pedicle_left, self.pedicle_right))
        if -0.7 <= t <= 0.9:
            parts.append(self.lamina)
        if -1.5 <= t <= 0.2:
            parts.append(self.spinous)
        if 0.1 <= t <= 0.7:
            parts.append(self.transverse)
        return np.maximum.reduce(parts)


def render(scan: Scan, lesion: Lesion, rng: np.random.Generator) -> Rendered:
    """The patient's CT (HU) with the ROI and feature masks of the target vertebra."""
    n, p = scan.matrix, scan.pixel_spacing
    axis = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * p
    trunk = _trunk(scan, rng, axis)
    rows, cols = _patch(scan, axis)
    u = axis[cols][None, :] - scan.spine_x
    v = axis[rows][:, None] - scan.spine_y
    spine = Spine(scan, np.broadcast_to(u, (len(rows), len(cols))), np.broadcast_to(v, (len(rows), len(cols))))
    field = lesions.LesionField(scan, lesion, spine, rng)
    texture = smooth_noise(rng, (scan.n_slices, len(rows), len(cols)), 1.2 / p)
    hu = np.empty((scan.n_slices, n, n), dtype=np.int16)
    roi = np.zeros((scan.n_slices, len(rows), len(cols)), np.uint8)
    masks = {name: np.zeros_like(roi) for name in lesion.features}
    sigma, noise_sigma = scan.psf_sigma / p, 0.6
    for k in range(scan.n_slices):
        z = scan.z_start + k * scan.slice_spacing
        patch = np.zeros((len(rows), len(cols)), np.float32)
        for offset in SUBSAMPLES:
            sample = trunk[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy()
            patch += _spine_slice(scan, spine, field, sample, texture[k], z + offset * scan.slice_thickness)
        image = trunk.copy()
        image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = patch / len(SUBSAMPLES)
        cv2.GaussianBlur(image, (0, 0), sigma, dst=image)
        image += scan.noise_sd * smooth_noise(rng, (n, n), noise_sigma)
        hu[k] = np.clip(np.rint(image + scan.hu_offset), -1024, 3071)
        roi[k], slice_masks = field.masks(z)
        for name, mask in slice_masks.items():
            masks[name][k] = mask
    return Rendered(hu=hu, roi=roi, masks=masks, origin=(int(rows[0]), int(cols[0])))


def _spine_slice(scan, spine, field, image, texture, z):
    """Composite the spine at height z (mm) over the trunk patch `image`."""
    field.mass(image, z, epidural=False)
    for level, centre in scan.level_z.items():
        dz = z - centre
        if abs(dz) > scan.body_height + scan.disc_height:
            continue
        target = level == scan.target
        inside = field.body_extent(dz) if target else float(abs(dz) <= scan.body_height / 2)
        if abs(dz) <= (scan.body_height + scan.disc_height) / 2:  # this level's half of each disc
            mix(image, HU["disc"], spine.disc * (1.0 - inside))
        endplate = (scan.body_height / 2 - abs(dz)) < 1.0
        cortex = scan.cortex_hu * (0.8 if endplate else 1.0)
        mix(image, cortex, spine.body * inside)
        cancellous = cortex * 0.8 if endplate else scan.cancellous_hu + 35.0 * texture
        if target:
            cancellous = field.cancellous(cancellous, texture, dz)
        mix(image, cancellous, spine.cancellous * inside)
        posterior = spine.posterior(dz, scan.body_height)
        mix(image, 0.55 * scan.cortex_hu + 60.0 * texture, posterior)
        if target:
            field.bone_lesions(image, dz, inside, posterior, texture)
    mix(image, HU["csf"], spine.canal * (1.0 - field.retropulsion(z)))
    field.mass(image, z, epidural=True)
    return image


def _trunk(scan: Scan, rng: np.random.Generator, axis: np.ndarray) -> np.ndarray:
    """Air, table, skin, fat, muscle, viscera, vessels and back muscles: the same on every slice."""
    p = scan.pixel_spacing
    x, y = axis[None, :], axis[:, None]
    a, b = scan.trunk_half_width, scan.trunk_half_depth
    d, r = scan.body_half_depth, scan.canal_radius
    back = scan.spine_y + d + 2 * r + 40.0 + scan.fat_thickness  # skin behind the spinous process
    centre = back - b
    image = np.full((len(axis), len(axis)), HU["air"], np.float32)
    mix(image, HU["table"], box(x, y, -210, 210, back + 12, back + 20, p))
    mix(image, HU["skin"], ellipse(x, y, a, b, p, cv=centre))
    mix(image, HU["fat"], ellipse(x, y, a - 2, b - 2, p, cv=centre))
    inner_a, inner_b = a - 2 - scan.fat_thickness, b - 2 - scan.fat_thickness
    mix(image, HU["muscle"], ellipse(x, y, inner_a, inner_b, p, cv=centre))
    cavity = ellipse(x, y, inner_a - 9, inner_b - 9, p, cv=centre)
    mix(image, HU["fat"] + 10, cavity)
    for _ in range(int(rng.integers(3, 7))):  # bowel loops and organs in front of the spine
        size = rng.uniform(15, 40)
        cx = rng.uniform(-0.6, 0.6) * inner_a
        cy = min(centre - rng.uniform(0.1, 0.6) * inner_b, scan.spine_y - scan.body_half_depth - 30 - size)
        mix(image, HU["organ"], ellipse(x, y, size, size * rng.uniform(0.6, 1.0), p, cx, cy) * cavity)
        if rng.random() < 0.5:
            mix(image, HU["gas"], ellipse(x, y, size * 0.4, size * 0.3, p, cx, cy - size * 0.3) * cavity)
    sx, sy = scan.spine_x, scan.spine_y
    w = scan.body_half_width
    for side in (-1, 1):
        mix(image, HU["muscle"], ellipse(x, y, 13, 15, p, sx + side * (w + 14), sy + 2))  # psoas
        mix(image, HU["muscle"] + 5, ellipse(x, y, 22, 21, p, sx + side * 27, sy + d + 2 * r + 18))  # erector spinae
    mix(image, HU["blood"], ellipse(x, y, 11, 11, p, sx + 14, sy - d - 14))  # aorta, left
    mix(image, HU["blood"] - 5, ellipse(x, y, 13, 8, p, sx - 20, sy - d - 11))  # vena cava, right
    return image


def _patch(scan: Scan, axis: np.ndarray):
    """Rows and columns of the square patch that holds the spine and any lesion."""
    w, d = scan.body_half_width, scan.body_half_depth
    u_span = (-w - 45.0, w + 45.0)
    v_span = (-d - 35.0, d + 2 * scan.canal_radius + 45.0)
    cols = np.flatnonzero((axis >= scan.spine_x + u_span[0]) & (axis <= scan.spine_x + u_span[1]))
    rows = np.flatnonzero((axis >= scan.spine_y + v_span[0]) & (axis <= scan.spine_y + v_span[1]))
    return rows, cols
