"""A synthetic spine CT cohort written exactly as a hospital user brings one.

`python -m vfrac.synth --out DIR --patients N --seed S` writes DICOM series, ROI and
feature masks and a manifest with known ground truth for every visual feature.
"""

from vfrac.synth.generate import generate_cohort
from vfrac.synth.params import FEATURES

__all__ = ["FEATURES", "generate_cohort"]
