"""Quiet TensorFlow's start-up chatter in test output (set before any test imports it)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per test worker (and per process it starts): two workers that each spread TensorFlow over every
    # core spend much of the machine waiting on one another.
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, "1")

# Each file runs on one test worker (its module fixtures are built once), and the files that train networks start
# first, longest first: with `--dist loadgroup --no-loadscope-reorder` (pyproject.toml) workers take groups in
# collection order, so the long pole (test_cv.py) starts at once instead of behind files of many quick tests.
# The two files that run experiments.cv in process share a worker: its traced training step is built once.
import pytest  # noqa: E402

LONGEST_FIRST = ("test_cv.py", "test_predict.py", "test_cv_options.py", "test_model.py", "test_explain.py")
SAME_WORKER = {"test_predict.py": "cv-in-process", "test_cv_options.py": "cv-in-process"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a file
    for item in items:
        item.add_marker(pytest.mark.xdist_group(SAME_WORKER.get(item.path.name, item.path.name)))
