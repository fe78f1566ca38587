"""The tiny cohort and its one uninterrupted run of `experiments.cv`, shared by the test files that need them.

Every fresh process of the command pays for tracing its network (tens of seconds at one
thread, even for `--arch resnet-tiny`), so tests/commands/test_cv.py (the run tree, review, report) and
tests/commands/test_faults.py (the numbers every fault must give) read one run instead of making two: the first
pytest worker to ask makes it under a file lock, the others wait for it. Its store is
read-only to its readers, except for test_cv's rerun, which must find everything done.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path

from bench import bench_faults as faults
from vfrac.synth import generate_cohort


def shared_root(tmp_path_factory) -> Path:
    """The session's temporary folder, common to every xdist worker (each has its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextmanager
def locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def tiny_cohort(tmp_path_factory) -> Path:
    """12 patients (seed 4, 96 x 96 slices): the cohort's manifest."""
    folder = shared_root(tmp_path_factory) / "shared-cohort"
    with locked(shared_root(tmp_path_factory) / "shared-cohort.lock"):
        if not (folder / "written").exists():
            generate_cohort(folder / "cohort", 12, seed=4, matrix=96)
            (folder / "written").touch()
    return folder / "cohort" / "manifest.csv"


def uninterrupted_run(tmp_path_factory) -> tuple[Path, faults.Outcome]:
    """The command on the tiny cohort, run once with the review and the report: (its store, its outcome)."""
    manifest = tiny_cohort(tmp_path_factory)
    store = shared_root(tmp_path_factory) / "shared-run"
    record = shared_root(tmp_path_factory) / "shared-run.json"
    with locked(shared_root(tmp_path_factory) / "shared-run.lock"):
        if not record.exists():
            outcome = faults.run_cv(manifest, store)
            record.write_text(json.dumps(outcome._asdict()))
    return store, faults.Outcome(**json.loads(record.read_text()))


def final_model_store(tmp_path_factory) -> tuple[Path, list[str], str]:
    """A tiny CV run with --final (one tuning trial per fold and for the final model), made once for the
    files that apply its models (test_predict, test_validate): (its folder, the command's arguments, the
    first run's console output)."""
    from experiments.cv import main as cv

    folder = shared_root(tmp_path_factory) / "final"
    record = shared_root(tmp_path_factory) / "final.txt"
    argv = ["--cohort", str(folder / "cohort" / "manifest.csv"), "--folds", "2", "--epochs", "1", "--input-size",
            "32", "--arch", "resnet-tiny", "--trials", "1", "--no-explain", "--final", "--tracking-uri",
            f"sqlite:///{folder}/mlflow.db", "--storage", f"sqlite:///{folder}/optuna.db"]
    with locked(shared_root(tmp_path_factory) / "final.lock"):
        if not record.exists():
            generate_cohort(folder / "cohort", 12, seed=11, matrix=96)
            captured, here = io.StringIO(), os.getcwd()
            os.chdir(folder)
            try:
                with contextlib.redirect_stdout(captured):
                    assert cv(argv) == 0
            finally:
                os.chdir(here)
            record.write_text(captured.getvalue())
    return folder, argv, record.read_text()
