"""vfrac: benign vs malignant vertebral fractures on CT, reproducibly."""

__version__ = "0.1.0"
