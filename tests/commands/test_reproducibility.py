"""The same command and seed give the same numbers in another process, also on a loaded machine."""

import subprocess
import sys

import pytest

from bench import bench_faults as faults
from tests.mlflow_store import artifact_rows, runs
from tests.shared_run import tiny_cohort

# TensorFlow's own thread defaults (one per core), not the single thread tests/conftest.py gives test processes.
DEFAULT_THREADS = dict.fromkeys(("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"))


def fold_numbers(store, folder):
    """The fold run's metrics (all but timings) and slice predictions (patient, slice, probability), sorted."""
    client, by_role = runs(store)
    (fold_run,) = [run for run in by_role["fold"] if "patient_auc" in run.data.metrics]  # the one fold done
    rows = artifact_rows(client, fold_run.info.run_id, "predictions/slices.csv", folder)
    metrics = {k: v for k, v in fold_run.data.metrics.items() if not k.endswith("_seconds")}  # not timings
    return metrics, sorted((r["patient_id"], int(r["slice"]), float(r["probability"]))
                                               for r in rows)


@pytest.mark.slow
@pytest.mark.e2e
def test_two_processes_one_under_cpu_load_give_identical_numbers(tmp_path_factory, tmp_path):
    """ResNet50 itself, small, one fold (`--fold 0`): with two inter-op threads two such processes gave other
    weights and slice probabilities (experiments.cv now asks for one). Both run at once, and a busy loop at the
    lowest priority takes whatever CPU they leave, so neither ever runs on an idle machine."""
    manifest = tiny_cohort(tmp_path_factory)
    args = ["--folds", "2", "--fold", "0", "--trials", "0", "--epochs", "1", "--input-size", "32", "--arch",
            "resnet50", "--no-explain"]
    burner = subprocess.Popen([sys.executable, "-c", "import os\nos.nice(19)\nwhile True: pass"])
    try:
        processes = [faults.start_cv(manifest, tmp_path / name, *args, env=DEFAULT_THREADS) for name in "ab"]
        outcomes = [faults.finish(process) for process in processes]
    finally:
        burner.kill()
    assert all(o.code == 0 for o in outcomes), [o.output[-3000:] for o in outcomes]
    (metrics, slices), (their_metrics, their_slices) = (fold_numbers(tmp_path / name, tmp_path / f"{name}-artifacts")
                                                        for name in "ab")
    assert {"patient_auc", "slice_auc"} <= set(metrics) and len(slices) > 50
    assert metrics == their_metrics
    assert slices == their_slices  # to the last bit
