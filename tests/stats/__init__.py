"""Tests of vfrac.stats against hand-computed and published values."""
