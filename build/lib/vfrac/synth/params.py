"""What each synthetic patient looks like, drawn before a voxel is rendered.

Two independent draws per patient: `Scan` (anatomy and acquisition: everything a
shortcut could hide in) never sees the label; `Lesion` (the fracture) is the only
thing drawn from it. Each patient has its own generator seeded by (seed, index), so
a patient's pixels do not depend on how many others are made or in what order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

LEVELS = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")
TARGET_LEVELS = ("T11", "T12", "L1", "L2", "L3", "L4")
# The six visual features, after Laredo et al. (Radiology 1995) and later CT series:
# the first three are named in the study's abstract; pedicle involvement (malignant),
# retropulsion of a posterior wall fragment and an intravertebral vacuum cleft (both
# benign) are the other CT signs radiologists score for this question.
FEATURES = (
    "soft_tissue_mass",
    "bone_destruction",
    "transverse_fracture_line",
    "pedicle_involvement",
    "posterior_wall_retropulsion",
    "intravertebral_vacuum",
)
# P(feature | class) at difficulty 0 and at difficulty 1; linear in between.
FEATURE_RATES = {
    "malignant": {
        "soft_tissue_mass": (0.85, 0.45),
        "bone_destruction": (0.97, 0.70),
        "transverse_fracture_line": (0.02, 0.30),
        "pedicle_involvement": (0.65, 0.35),
        "posterior_wall_retropulsion": (0.02, 0.20),
        "intravertebral_vacuum": (0.00, 0.08),
    },
    "benign": {
        "soft_tissue_mass": (0.00, 0.15),
        "bone_destruction": (0.00, 0.15),
        "transverse_fracture_line": (0.90, 0.55),
        "pedicle_involvement": (0.00, 0.05),
        "posterior_wall_retropulsion": (0.40, 0.30),
        "intravertebral_vacuum": (0.30, 0.15),
    },
}
# Signs that point to malignancy; the others point to a benign fracture.
MALIGNANT_SIGNS = ("soft_tissue_mass", "bone_destruction", "pedicle_involvement")
READER_ACCURACY = {"reader_senior": 0.99, "reader_mid": 0.952, "reader_junior": 0.928}


@dataclass(frozen=True)
class Scan:
    """Anatomy and acquisition, drawn independently of the label."""

    matrix: int
    pixel_spacing: float  # mm
    slice_spacing: float  # mm between slice centres
    slice_thickness: float  # mm, >= spacing (overlapping reconstructions are common)
    n_slices: int
    z_start: float  # mm, first slice, relative to the target vertebra's centre
    table_z: float  # mm, patient z of the target vertebra's centre (scanner table position)
    target: str  # level of the target vertebra
    levels: tuple[str, ...]  # levels rendered, cranial to caudal
    level_z: dict[str, float]  # mm, centre of each vertebral body
    body_height: float  # mm, vertebral body height
    disc_height: float
    body_half_width: float  # vertebral body semi-axes, mm
    body_half_depth: float
    canal_radius: float
    cortex: float  # mm
    cortex_hu: float
    cancellous_hu: float
    spine_x: float  # mm, spine centre in the image plane
    spine_y: float
    trunk_half_width: float  # trunk ellipse semi-axes, mm
    trunk_half_depth: float
    fat_thickness: float
    noise_sd: float  # HU
    psf_sigma: float  # mm, scanner blur
    signed_storage: bool  # PixelRepresentation 1 (else unsigned, values + 1024)
    ascending_instances: bool  # InstanceNumber rises with z (else falls)
    header: dict = field(default_factory=dict)  # fake patient and scanner fields
    hu_offset: float = 0.0  # HU added to every voxel (another site's calibration, `Site`)


@dataclass(frozen=True)
class Site:
    """Another hospital's scanner: the cohort's CTs with a shift, to see how a model trained on one site
    holds on another (external validation). The defaults change nothing."""

    noise_scale: float = 1.0  # image noise SD times this
    slice_thickness: float | None = None  # mm: every series reconstructed at this thickness and spacing
    hu_offset: float = 0.0  # HU added to every voxel (a calibration offset)

    def __post_init__(self):
        if not 0.0 <= self.noise_scale <= 10.0:
            raise ValueError(f"noise scale must be in [0, 10], received {self.noise_scale}")
        if self.slice_thickness is not None and not 0.5 <= self.slice_thickness <= 10.0:
            raise ValueError(f"slice thickness must be 0.5 to 10 mm, received {self.slice_thickness}")
        if not -500.0 <= self.hu_offset <= 500.0:
            raise ValueError(f"HU offset must be within +-500, received {self.hu_offset}")

    def apply(self, scan: Scan) -> Scan:
        """The scan as this site acquires it: same anatomy and coverage, other noise, slices and calibration."""
        changes = {"noise_sd": scan.noise_sd * self.noise_scale, "hu_offset": scan.hu_offset + self.hu_offset}
        if self.slice_thickness is not None:
            coverage = (scan.n_slices - 1) * scan.slice_spacing
            changes |= {"slice_spacing": self.slice_thickness, "slice_thickness": self.slice_thickness,
                        "n_slices": int(round(coverage / self.slice_thickness)) + 1}
        return replace(scan, **changes)


SAME_SITE = Site()  # no shift


@dataclass(frozen=True)
class Lesion:
    """The fracture of the target vertebra: which features, and their shapes."""

    label: str
    features: dict[str, bool]
    collapse: str  # "none", "wedge", "biconcave", "crush"
    height_loss: float  # fraction of body height lost at the worst point
    destruction_variant: str  # "lytic", "sclerotic", "mixed"
    destruction_blobs: tuple  # ((dz, dy, dx, rz, ry, rx) in units of the body's semi-axes)
    mass_site: str  # "left", "right", "anterior", "epidural"
    mass_size: float  # fraction of the body half-width
    pedicle_side: str  # "left", "right", "both"
    line_position: float  # -1 (caudal) .. 1 (cranial) within the body
    line_sclerotic: bool
    line_thickness: float  # mm
    heterogeneity: float  # HU of mottling in benign cancellous bone (mimics)
    hardness: float  # 0 easy .. 1 features point the wrong way

    def shows(self, name: str) -> bool:
        """Whether the CT shows the feature: an involved pedicle is drawn as soft tissue where its bone
        was, so it is bone destruction too (in the manifest's flags and the feature masks alike)."""
        return self.features[name] or (name == "bone_destruction" and self.features["pedicle_involvement"])


def draw_scan(rng: np.random.Generator, matrix: int = 512) -> Scan:
    """Anatomy and acquisition of one patient (the label is not an argument)."""
    pixel_spacing = rng.uniform(0.6, 0.9) * 512 / matrix
    slice_spacing = float(rng.choice([1.0, 1.5, 2.0, 2.5, 3.0]))
    body_height = rng.uniform(22.0, 29.0)
    disc_height = rng.uniform(7.0, 11.0)
    step = body_height + disc_height
    target = str(rng.choice(TARGET_LEVELS))
    t = LEVELS.index(target)
    levels = LEVELS[max(0, t - 2): t + 3]
    level_z = {name: (t - i) * step for i, name in enumerate(LEVELS) if name in levels}  # +z is superior
    below = rng.uniform(1.05, 1.5) * step  # coverage below and above the target centre:
    above = rng.uniform(1.05, 1.5) * step  # the target, its neighbours' centres and beyond
    n_slices = int(round((below + above) / slice_spacing)) + 1
    thickness = slice_spacing * float(rng.choice([1.0, 1.0, 1.5]))
    scale = rng.uniform(0.85, 1.15)  # vertebra size
    return Scan(
        matrix=matrix, pixel_spacing=float(pixel_spacing), slice_spacing=slice_spacing,
        slice_thickness=float(min(thickness, 5.0)), n_slices=n_slices, z_start=float(-below),
        table_z=float(rng.uniform(-900.0, -200.0)),
        target=target, levels=tuple(levels), level_z=level_z,
        body_height=float(body_height), disc_height=float(disc_height),
        body_half_width=float(21.0 * scale), body_half_depth=float(16.0 * scale),
        canal_radius=float(rng.uniform(7.5, 10.0)), cortex=float(rng.uniform(1.0, 1.8)),
        cortex_hu=float(rng.uniform(550, 1100)), cancellous_hu=float(rng.uniform(150, 290)),
        spine_x=float(rng.uniform(-8, 8)), spine_y=float(rng.uniform(15, 45)),
        trunk_half_width=float(rng.uniform(135, 185)), trunk_half_depth=float(rng.uniform(95, 140)),
        fat_thickness=float(rng.uniform(8, 35)), noise_sd=float(rng.uniform(8, 30)),
        psf_sigma=float(rng.uniform(0.35, 0.7)), signed_storage=bool(rng.random() < 0.5),
        ascending_instances=bool(rng.random() < 0.5), header=_header(rng),
    )


def draw_lesion(rng: np.random.Generator, label: str, difficulty: float) -> Lesion:
    """The target vertebra's fracture for a patient of class `label`."""
    rates = FEATURE_RATES[label]
    features = {name: bool(rng.random() < lo + (hi - lo) * difficulty) for name, (lo, hi) in rates.items()}
    malignant = label == "malignant"
    if malignant and not (features["bone_destruction"] or features["soft_tissue_mass"]
                          or features["pedicle_involvement"]):
        features["bone_destruction"] = True  # a pathological fracture always has a cause
    if malignant:
        collapse = str(rng.choice(["none", "wedge", "crush", "crush", "biconcave"]))
    else:
        collapse = str(rng.choice(["wedge", "wedge", "biconcave", "crush"]))
    blobs = tuple(
        (rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.6), rng.uniform(-0.6, 0.6),
         rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.65), rng.uniform(0.3, 0.65))
        for _ in range(int(rng.integers(1, 4)))
    )
    wrong = [name for name in FEATURES if features[name] and ((name in MALIGNANT_SIGNS) != malignant)]
    missing = [name for name in MALIGNANT_SIGNS if malignant and not features[name]]
    hardness = min(1.0, 0.35 * len(wrong) + 0.12 * len(missing) + (0.15 if collapse == "none" else 0.0))
    return Lesion(
        label=label, features=features, collapse=collapse,
        height_loss=float(rng.uniform(0.15, 0.45) if collapse != "none" else 0.0),
        destruction_variant=str(rng.choice(["lytic", "lytic", "lytic", "mixed", "sclerotic"])),
        destruction_blobs=blobs,
        mass_site=str(rng.choice(["left", "right", "anterior", "epidural"])),
        mass_size=float(rng.uniform(0.35, 0.8)),
        pedicle_side=str(rng.choice(["left", "right", "both"])),
        line_position=float(rng.uniform(-0.5, 0.6)), line_sclerotic=bool(rng.random() < 0.3),
        line_thickness=float(rng.uniform(1.2, 2.5)),
        heterogeneity=float(rng.uniform(0, 60) * difficulty if not malignant else 0.0),
        hardness=float(hardness),
    )


def reader_calls(rng: np.random.Generator, labels: list[str], hardness: np.ndarray) -> dict[str, list[str]]:
    """Simulated readers: expected accuracy as in the study, errors on hard cases.

    Each reader errs on case i with probability (1 - accuracy) * w_i / mean(w), with
    w_i = exp(3 hardness_i), so the cohort's expected accuracy is the reader's.
    """
    weights = np.exp(3.0 * np.asarray(hardness))
    weights /= weights.mean()
    calls = {}
    for reader, accuracy in READER_ACCURACY.items():
        wrong = rng.random(len(labels)) < np.minimum(1.0, (1 - accuracy) * weights)
        flip = {"benign": "malignant", "malignant": "benign"}
        calls[reader] = [flip[label] if w else label for label, w in zip(labels, wrong, strict=True)]
    return calls


SURNAMES = ("MUELLER", "GARCIA", "NGUYEN", "SMITH", "ROSSI", "DUBOIS", "KOWALSKI", "TANAKA",
            "OKAFOR", "JOHANSSON", "SILVA", "WANG", "MURPHY", "HOFFMANN", "PETROV", "COHEN")
GIVEN = ("ANNA", "JOHN", "MARIA", "WEI", "PIERRE", "FATIMA", "OLGA", "HIROSHI", "GRACE",
         "LUCA", "SOFIA", "AHMED", "EMMA", "JOSE", "INGRID", "DAVID")
SCANNERS = (("SIEMENS", "SOMATOM Definition AS+"), ("GE MEDICAL SYSTEMS", "Revolution CT"),
            ("Philips", "IQon Spectral CT"), ("TOSHIBA", "Aquilion ONE"))


def _header(rng: np.random.Generator) -> dict:
    """Fake but realistic identifying and scanner fields (they must never leak)."""
    manufacturer, model = SCANNERS[int(rng.integers(len(SCANNERS)))]
    year = int(rng.integers(1935, 1990))
    return {
        "PatientName": f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}",
        "PatientID": f"H{int(rng.integers(10**7, 10**8))}",
        "PatientBirthDate": f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "PatientSex": str(rng.choice(["F", "M"])),
        "AccessionNumber": f"A{int(rng.integers(10**9, 10**10))}",
        "StudyDate": f"20{int(rng.integers(15, 25))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "Manufacturer": manufacturer,
        "ManufacturerModelName": model,
        "KVP": float(rng.choice([100.0, 120.0, 140.0])),
        "ConvolutionKernel": str(rng.choice(["B70f", "BONE", "YC", "FC30"])),
        "SeriesNumber": int(rng.integers(2, 9)),
    }
