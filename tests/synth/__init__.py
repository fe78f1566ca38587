"""Tests of vfrac.synth: the synthetic cohort."""
