"""A synthetic spine CT cohort written exactly as a hospital user brings one.

`python -m vfrac.synth --out DIR --patients N --seed S` writes DICOM series, ROI and
feature masks and a manifest with known ground truth for every visual feature.
"""

from vfrac.synth.generate import DEMO, generate_cohort
from vfrac.synth.params import FEATURES

__all__ = ["DEMO", "FEATURES", "generate_cohort"]
