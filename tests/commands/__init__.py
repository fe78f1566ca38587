"""Tests of the commands end to end: python -m experiments.cv, predict, validate, faults, servers, install."""
