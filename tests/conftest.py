"""Quiet TensorFlow's start-up chatter in test output (set before any test imports it); the servers' fixture."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per test worker (and per process it starts): two workers that each spread TensorFlow over every
    # core spend much of the machine waiting on one another.
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(name, "1")

# The files that train networks, longest first: with `--dist loadfile --no-loadscope-reorder` (pyproject.toml) the
# workers take files in collection order, so the long poles (test_servers.py: three workers on the servers and their
# faults, the job array; test_faults.py: a killed run and its rerun; test_cv.py: the shared run) start at once, one
# on each worker, while the rest follows, instead of starting minutes late behind files with many quick tests.
LONGEST_FIRST = ("test_servers.py", "test_faults.py", "test_cv.py", "test_reproducibility.py", "test_predict.py",
                 "test_dicomweb.py", "test_reader_study.py", "test_model.py", "test_explain.py",
                 "test_cv_options.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a file


@pytest.fixture(scope="session")
def servers():
    """The PostgreSQL and MLflow servers of `python -m tests.servers start DIR` (.ci/run starts them)."""
    from tests.servers import ENV, Servers

    folder = os.environ.get(ENV)
    if not folder:
        pytest.skip(f"needs the test servers: python -m tests.servers start DIR, then export {ENV}=DIR")
    return Servers.when_ready(folder)
