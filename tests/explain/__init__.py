"""Tests of explain/: Grad-CAM maps and their sanity checks."""
