"""Quiet TensorFlow's start-up chatter in test output (set before any test imports it)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
