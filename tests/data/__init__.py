"""Tests of vfrac.data: crops, the window, the cache, splits and the input pipeline."""
