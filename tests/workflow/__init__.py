"""Tests of the CV workflow's parts in experiments/: config, protocol, tracking, claims, stores, tuning, report."""
