"""One fault suite: hostile input and faults, each case a command in a child process under a memory limit.

The cases and the runner are bench/bench_faults.py's (this is also its smoke test).
Hostile input: `python -m vfrac.prepare --cohort CASE/manifest.csv --workers 1` on a
one-patient cohort holding the bomb (a .nii.gz whose header claims 8 GB, a deflated
DICOM that inflates past the budget, a DICOM claiming 60000 x 60000 pixels, a
manifest with a repeated column or an extra field, an MR series, ...), under a 1 GiB
address-space ceiling (RLIMIT_AS). Before the voxel budget the readers died there
with MemoryError or asked for 8 GB and more; each case must now end in `error: ...`
naming the file and the reason, exit code 2, peak resident memory under 1 GiB.

The faults of `python -m experiments.cv` (slow): a run killed with SIGKILL inside a
trial of its second fold and run again, giving the numbers of an uninterrupted run
(tests/commands/test_cv.py's, made once for both files). Workers sharing one run, and their
faults, are tests/commands/test_servers.py's, on PostgreSQL and an MLflow server.
"""

import math
import re

import pytest

from bench import bench_faults as faults
from tests.mlflow_store import runs
from tests.shared_run import tiny_cohort, uninterrupted_run

CASES = {case.name: case for case in faults.CASES}
HOSTILE = [name for name, case in CASES.items() if case.expected]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    return faults.write_cases(tmp_path_factory.mktemp("faults"))


def test_the_suite_has_every_case_of_the_issue():
    assert {"nifti_8gb", "deflated_dicom", "dicom_60000", "manifest_repeated_column", "manifest_extra_field",
            "mr_series"} <= set(HOSTILE)


def test_the_bombs_are_small_files(cohorts):
    def size(name, file):
        path = cohorts[name].parent / file
        return (next(path.iterdir()) if path.is_dir() else path).stat().st_size

    assert size("nifti_8gb", "header.nii.gz") < 200 and size("npy_8gb_roi", "header.npy") < 200
    assert size("nifti_zeros", "zeros.nii.gz") < 2**21
    assert size("dicom_60000", "native") < 2000 and size("dicom_60000_rle", "rle") < 2000
    assert 3.4e6 < size("deflated_dicom", "deflated") < 3.6e6  # the issue's 3.5 MB that inflates to 3.6 GB


def test_the_wrapper_gives_the_exit_code_and_the_peak_memory(tmp_path):
    (tmp_path / "grow.py").write_text("import sys\nheld = b'x' * (int(sys.argv[1]) * 2**20)\nsys.exit(3)\n")
    grown = faults.run_case(["grow", "200"], tmp_path, faults.INPUT_LIMIT)
    assert grown.code == 3 and 200 < grown.peak_mb < 300, grown
    assert "peak_kb" not in grown.output and grown.seconds > 0
    refused = faults.run_case(["grow", "2000"], tmp_path, faults.INPUT_LIMIT)  # 2 GB under a 1 GiB ceiling
    assert refused.code == 1 and "MemoryError" in refused.output and refused.peak_mb < 100, refused


@pytest.mark.e2e
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_input_ends_in_one_clear_error_under_a_memory_limit(cohorts, name):
    case = CASES[name]
    outcome = faults.run_input_case(case, cohorts[name])
    error = outcome.error()
    assert outcome.code == 2 and error.startswith("error: "), outcome.output
    assert re.search(case.expected, error), error
    assert "Traceback" not in outcome.output, outcome.output
    assert outcome.peak_mb < 1024, outcome.peak_mb
    assert not any(identity in outcome.output for identity in faults.IDENTITIES), outcome.output


@pytest.mark.e2e
def test_a_valid_cohort_prepares_under_the_same_limit(cohorts):
    outcome = faults.run_input_case(CASES["valid_control"], cohorts["valid_control"])
    assert outcome.code == 0 and "prepared 1 patient(s)" in outcome.output, outcome.output
    assert outcome.peak_mb < 1024


def test_the_table_gives_the_whole_error_on_one_line_without_the_cases_folder(tmp_path):
    output = f"error: 1 problem(s) in {tmp_path}/case/manifest.csv:\n  row 1 (patient_id P001): a|b\n"
    assert faults.outcome_text(faults.Outcome(2, "1 patient(s)\n" + output, 51.2, 0.3), tmp_path) == (
        "exit 2: `error: 1 problem(s) in case/manifest.csv: row 1 (patient_id P001): a\\|b`")
    assert faults._mb(math.nan) == "killed, not measured"


# ---------------------------------------------------------------- experiments.cv


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return tiny_cohort(tmp_path_factory)


def uninterrupted_numbers(tmp_path_factory):
    """The pooled numbers every fault must give: those of tests/commands/test_cv.py's uninterrupted run (the first
    worker to ask makes it; tests/shared_run.py). Asked for after a test's own processes, so none waits on it idle."""
    store, outcome = uninterrupted_run(tmp_path_factory)
    assert outcome.code == 0, outcome.output
    return faults.pooled(store, tmp_path_factory.mktemp("uninterrupted-artifacts"))


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_killed_inside_a_trial_resumes_and_gives_the_uninterrupted_numbers(cohort, tmp_path_factory,
                                                                                   tmp_path):
    store = tmp_path / "store"
    first, second = faults.killed_and_rerun(cohort, store, "--no-explain")
    assert first.code == -9 and math.isnan(first.peak_mb)
    assert "fold 0: done" in first.output and "fold 1: tuning" in first.output, first.output
    assert second.code == 0, second.output
    assert "fold 0: already done, reused" in second.output and "fold 0: tuning" not in second.output, second.output
    assert "fold 1: tuning, " in second.output and "pooled out-of-fold results, 12 patients" in second.output
    trials = faults.studies(store)
    assert sorted(trials) == ["fold0", "fold1"]
    for fold, rows in trials.items():
        done = {position: params for _, state, position, params in rows if state == "COMPLETE"}
        assert sorted(done) == [0, 1], (fold, rows)  # the budget, once per position
    killed = [row for row in trials["fold1"] if row[1] == "FAIL"]
    assert len(killed) == 1 and len(trials["fold0"]) == 2
    _, _, position, params = killed[0]
    rerun = [row for row in trials["fold1"] if row[1] == "COMPLETE" and row[2] == position]
    assert rerun[0][0] > killed[0][0] and rerun[0][3] == params  # a new trial, the same settings
    client, by_role = runs(store)
    for run in sum(by_role.values(), []):
        assert run.info.status == "FINISHED" and "vfrac.failure" not in run.data.tags, run.data.tags
    reference = uninterrupted_numbers(tmp_path_factory)
    assert faults.differences(faults.pooled(store, tmp_path / "artifacts"), reference) == []


@pytest.mark.slow
@pytest.mark.e2e
def test_the_uninterrupted_run_pools_every_patient_with_its_peak_measured(tmp_path_factory):
    _, outcome = uninterrupted_run(tmp_path_factory)
    metrics, slices = uninterrupted_numbers(tmp_path_factory)
    assert "pooled out-of-fold results, 12 patients" in outcome.output, outcome.output
    assert {"patient_auc", "slice_auc", "baseline_patient_auc"} <= set(metrics) and slices
    assert 100 < outcome.peak_mb < 16 * 1024, outcome.peak_mb
