"""Tests of vfrac.io and vfrac.cohort: reading what hospitals store, and refusing what would read wrong."""
