"""The fracture of the target vertebra: collapse, and each visual feature with its mask.

Shapes live in mm around the target body's centre (u lateral, +u = patient left;
v posterior; dz along the spine). Benign fractures collapse with compacted bone and
may show a fracture line, a retropulsed posterior fragment or a vacuum cleft;
malignant ones destroy bone, grow a mass, involve a pedicle, with or without
collapse. Which features a patient has comes from `Lesion.features`; the same shape
that draws a feature makes its mask, so masks lie exactly where the feature is.
"""

from __future__ import annotations

import cv2
import numpy as np

from vfrac.synth.params import Lesion, Scan
from vfrac.synth.shapes import box, ellipse, mix

SOFT_TISSUE_HU = 45.0
GAS_HU = -850.0
# The bone destruction mask takes in the remaining bone this close to the destroyed bone: the broken cortex's ends
# and the lesion's zone of transition, where a reader (and the network, README) sees the destruction.
DESTRUCTION_MARGIN_MM = 1.5


class LesionField:
    def __init__(self, scan: Scan, lesion: Lesion, spine, rng: np.random.Generator):
        self.scan, self.lesion, self.spine = scan, lesion, spine
        self.centre = scan.level_z[scan.target]
        self.has = {name: present for name, present in lesion.features.items()}
        h, w, d = scan.body_height, scan.body_half_width, scan.body_half_depth
        u, v = spine.u, spine.v
        loss = lesion.height_loss * h
        nu, nv = u / w, v / d
        if lesion.collapse == "wedge":  # anterior height lost
            self.top, self.bottom = loss * np.clip(0.5 - 0.5 * nv, 0, 1), np.zeros_like(u)
        elif lesion.collapse == "biconcave":  # both endplates cave in centrally
            bowl = np.clip(1 - nu**2 - nv**2, 0, 1)
            self.top, self.bottom = 0.5 * loss * bowl, 0.5 * loss * bowl
        elif lesion.collapse == "crush":
            self.top, self.bottom = np.full_like(u, 0.6 * loss), np.full_like(u, 0.4 * loss)
        else:
            self.top, self.bottom = np.zeros_like(u), np.zeros_like(u)
        self.top, self.bottom = self.top.astype(np.float32), self.bottom.astype(np.float32)
        shrink = 1.0 if lesion.label == "malignant" else 0.6  # benign mimics are smaller
        self.blobs = [(bz * h / 2, by * d, bx * w, rz * h / 2 * shrink, ry * d * shrink, rx * w * shrink)
                      for bz, by, bx, rz, ry, rx in lesion.destruction_blobs]
        self.mottle = rng.random() < 0.5  # mixed lesions: which texture sign is sclerotic

    # -- geometry helpers -------------------------------------------------------------
    def body_extent(self, dz: float) -> np.ndarray:
        """1 where the (collapsed) target body reaches height dz, per pixel."""
        half = self.scan.body_height / 2
        return ((dz <= half - self.top) & (dz >= -half + self.bottom)).astype(np.float32)

    def _ellipsoid(self, dz, centre_dz, cv, cu, rz, rv, ru):
        s = 1.0 - ((dz - centre_dz) / rz) ** 2
        if s <= 0:
            return np.zeros_like(self.spine.u)
        return ellipse(self.spine.u, self.spine.v, ru * np.sqrt(s), rv * np.sqrt(s), self.spine.pixel, cu, cv)

    def _destruction(self, dz):
        if not self.has["bone_destruction"]:
            return np.zeros_like(self.spine.u)
        return np.maximum.reduce([self._ellipsoid(dz, *blob) for blob in self.blobs])

    def _destroyed(self, dz, inside, posterior):
        """Where the destruction blobs meet bone: the (collapsed) body and the posterior elements."""
        return self._destruction(dz) * np.maximum(self.spine.body * inside, posterior)

    def _mass(self, dz):
        if not self.has["soft_tissue_mass"]:
            return np.zeros_like(self.spine.u)
        s, lesion = self.scan, self.lesion
        m = lesion.mass_size * s.body_half_width
        h, d, r = s.body_height, s.body_half_depth, s.canal_radius
        if lesion.mass_site == "epidural":
            return self._ellipsoid(dz, 0.0, self.spine.canal_v - 0.25 * r, 0.0, 0.7 * h, 0.6 * r, 0.85 * r)
        if lesion.mass_site == "anterior":
            return self._ellipsoid(dz, 0.0, -d - 0.4 * m, 0.0, 0.65 * h, 0.8 * m, 1.4 * m)
        side = 1.0 if lesion.mass_site == "left" else -1.0
        return self._ellipsoid(dz, 0.0, -0.1 * d, side * (s.body_half_width + 0.4 * m), 0.65 * h, 1.1 * m, m)

    def _pedicles(self, dz):
        t = dz / (self.scan.body_height / 2)
        if not self.has["pedicle_involvement"] or not -0.1 <= t <= 0.9:
            return np.zeros_like(self.spine.u)
        side = self.lesion.pedicle_side
        left = self.spine.pedicle_left if side in ("left", "both") else 0.0
        right = self.spine.pedicle_right if side in ("right", "both") else 0.0
        return np.maximum(left, right) * np.ones_like(self.spine.u)

    def _line(self, dz):
        if not self.has["transverse_fracture_line"]:
            return np.zeros_like(self.spine.u)
        lesion, half = self.lesion, self.scan.body_height / 2
        level = lesion.line_position * 0.7 * half - 0.5 * float(self.top.mean()) + 0.08 * self.spine.v
        return (np.abs(dz - level) <= lesion.line_thickness / 2).astype(np.float32)

    def _vacuum(self, dz):
        if not self.has["intravertebral_vacuum"]:
            return np.zeros_like(self.spine.u)
        s = self.scan
        below_top = s.body_height / 2 - float(self.top.max()) - 3.0
        return self._ellipsoid(dz, below_top, -0.2 * s.body_half_depth, 0.0, 1.3,
                               0.45 * s.body_half_depth, 0.6 * s.body_half_width)

    def _fragment(self, dz):
        if not self.has["posterior_wall_retropulsion"]:
            return np.zeros_like(self.spine.u)
        s = self.scan
        top = s.body_height / 2 - float(np.percentile(self.top, 10))
        if not top - 0.4 * s.body_height <= dz <= top:
            return np.zeros_like(self.spine.u)
        w, d = s.body_half_width, s.body_half_depth
        return box(self.spine.u, self.spine.v, -0.45 * w, 0.45 * w, d - 1.5, d + 0.4 * s.canal_radius + 2,
                   self.spine.pixel)

    # -- drawing ----------------------------------------------------------------------
    def mass(self, image, z, epidural: bool):
        """Draw the soft tissue mass: paravertebral ones before the bone, epidural after the canal."""
        if (self.lesion.mass_site == "epidural") == epidural:
            mix(image, SOFT_TISSUE_HU, self._mass(z - self.centre))

    def retropulsion(self, z):
        return self._fragment(z - self.centre)

    def cancellous(self, values, texture, dz):
        """Target cancellous bone: compacted under a collapsed endplate, mottled in mimics."""
        values = values + self.lesion.heterogeneity * texture
        if self.lesion.collapse != "none":
            compacted = dz >= self.scan.body_height / 2 - self.top - 4.0
            values = values + 50.0 * compacted
        return values

    def bone_lesions(self, image, dz, inside, posterior, texture):
        spine, s = self.spine, self.scan
        destroyed = self._destroyed(dz, inside, posterior)
        variant = self.lesion.destruction_variant
        sclerotic = {"lytic": 0.0, "sclerotic": 1.0}.get(variant)
        if sclerotic is None:
            sclerotic = ((texture > 0.3) if self.mottle else (texture < -0.3)).astype(np.float32)
        mix(image, SOFT_TISSUE_HU + (0.75 * s.cortex_hu - SOFT_TISSUE_HU) * sclerotic + 10 * texture, destroyed)
        mix(image, SOFT_TISSUE_HU + 8 * texture, self._pedicles(dz))
        line_hu = 0.65 * s.cortex_hu if self.lesion.line_sclerotic else 60.0
        mix(image, line_hu, self._line(dz) * spine.cancellous * inside)
        mix(image, GAS_HU, self._vacuum(dz) * spine.cancellous * inside)
        mix(image, 0.5 * s.cortex_hu, self._fragment(dz))  # cortex and cancellous bone of the fragment

    def masks(self, z) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """ROI (the target vertebra) and each feature's mask at the slice centre z."""
        dz = z - self.centre
        spine = self.spine
        inside = self.body_extent(dz)
        posterior = spine.posterior(dz, self.scan.body_height)
        fragment = self._fragment(dz)
        roi = np.maximum.reduce([spine.body * inside, posterior, fragment]) > 0.5
        mass = self._mass(dz) > 0.5
        mass &= (spine.canal > 0.5) if self.lesion.mass_site == "epidural" else ~roi
        pedicles = self._pedicles(dz)
        # An involved pedicle is drawn as soft tissue where its bone was: destroyed bone too (Lesion.shows).
        destroyed = np.maximum(self._destroyed(dz, inside, posterior), pedicles) > 0.5
        features = {
            "soft_tissue_mass": mass,
            "bone_destruction": with_margin(destroyed, roi, spine.pixel),
            "transverse_fracture_line": (self._line(dz) * spine.cancellous * inside) > 0.5,
            "pedicle_involvement": pedicles > 0.5,
            "posterior_wall_retropulsion": fragment > 0.5,
            "intravertebral_vacuum": (self._vacuum(dz) * spine.cancellous * inside) > 0.5,
        }
        return roi.astype(np.uint8), {name: mask.astype(np.uint8) for name, mask in features.items()}


def with_margin(destroyed: np.ndarray, bone: np.ndarray, pixel_mm: float) -> np.ndarray:
    """`destroyed` and the `bone` within DESTRUCTION_MARGIN_MM of it (in-plane), as booleans."""
    if not destroyed.any():
        return destroyed
    outside = np.ascontiguousarray(~destroyed, dtype=np.uint8)
    distance_mm = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) * pixel_mm
    return destroyed | (bone & (distance_mm <= DESTRUCTION_MARGIN_MM))
