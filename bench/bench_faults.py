"""Hostile input and faults, each in a child process under a memory limit: how each ends, and its peak memory.

    python bench/bench_faults.py [--cv] [--limit-gb 1]

Each hostile-input case is a one-patient cohort (a manifest.csv and its files)
written into its own folder: a .nii.gz whose header claims 8 GB, a deflated DICOM
that inflates past the budget, a DICOM claiming 60000 x 60000 pixels, a manifest
with a repeated column or with an extra field in a row, an MR series, and the rest of
issue 12's memory bombs. `python -m vfrac.prepare --cohort CASE/manifest.csv
--workers 1` reads it in a fresh process whose address space is capped
(resource.RLIMIT_AS, `--limit-gb`); each must end in one `error: ...` line with exit
code 2, its peak resident memory (the kernel's VmHWM of that process) under 1 GiB.
A valid cohort is the control: it prepares under the same cap.

`--cv` adds the faults of `python -m experiments.cv` on a tiny synthetic cohort (12
patients, 2 folds, 2 trials, 1 epoch, input 32, no explanation): a run killed
(SIGKILL) inside a trial of its second fold and run again, and two processes started
together on one store, each compared with an uninterrupted run (every pooled metric
to 1e-9, every slice's probability to 1e-6). They run under a 16 GiB cap (TensorFlow
maps more address space than it uses); their peak is the command's own process's.

Prints one markdown table: case | command | outcome | peak memory | seconds.
tests/commands/test_faults.py runs the same cases from here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.uid import MRImageStorage, RLELossless

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.bench_load import cpu_name  # noqa: E402
from tests.dicom_factory import (  # noqa: E402
    nifti_header,
    write_claim,
    write_deflated_zeros,
    write_gzip,
    write_npy_header,
    write_series,
)

GIB = 2**30
INPUT_LIMIT = GIB  # the address-space cap of a hostile-input case, and the ceiling of its peak
CV_LIMIT = 16 * GIB
UID_NAME = "1.2.826.0.1.3680043.8.498.1"  # a DICOM file named by a UID, as scanners often do
IDENTITIES = ("Doe^Jane", "MRN-123456", UID_NAME)  # tests.dicom_factory's header identity and the file name
PEAK_LINE = "bench_faults peak_kb="
# Runs `python -m MODULE ARGS...` in this process under an address-space cap, then reports its peak resident memory.
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent (pytest, perhaps with TensorFlow).
WRAPPER = f"""
import resource, runpy, sys
limit, module = int(sys.argv[1]), sys.argv[2]
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = [module, *sys.argv[3:]]
code = 1
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as stop:
    code = stop.code
finally:
    sys.stdout.flush()
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    print("{PEAK_LINE}" + peak, file=sys.stderr, flush=True)
sys.exit(code)
"""


class Outcome(NamedTuple):
    code: int  # the exit status; -9 for a process killed with SIGKILL
    output: str  # stdout and stderr together, without the peak line
    peak_mb: float  # peak resident memory of the command's process; nan where it was killed
    seconds: float

    def error(self) -> str:
        """The output from its first `error: ` line on (a manifest's problems take several lines), or ''."""
        found = re.search(r"^error: .*", self.output, re.M | re.S)
        return found.group(0).strip() if found else ""


def child_env(extra: dict | None = None) -> dict:
    """This environment without a voxel budget of its own, with the repository importable, and `extra` (a value
    None removes the variable)."""
    env = {k: v for k, v in os.environ.items() if k != "VFRAC_MAX_VOXELS"}
    env.update(PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return {k: v for k, v in (env | (extra or {})).items() if v is not None}


def start_case(command_args, cwd, memory_limit_bytes: int | None, env: dict | None = None) -> subprocess.Popen:
    """Start `python -m command_args...` in the wrapper; `finish` waits for it."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(memory_limit_bytes or 0), *map(str, command_args)], cwd=cwd,
        env=child_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    process.started = time.perf_counter()
    return process


def finish(process: subprocess.Popen, timeout: float = 900) -> Outcome:
    output = process.communicate(timeout=timeout)[0]
    seconds = time.perf_counter() - process.started
    peaks = re.findall(rf"^{PEAK_LINE}(\d+)$", output, re.M)
    output = re.sub(rf"^{PEAK_LINE}\d+\n?", "", output, flags=re.M)
    return Outcome(process.returncode, output, int(peaks[-1]) / 1024 if peaks else math.nan, seconds)


def run_case(command_args, cwd, memory_limit_bytes: int | None, env: dict | None = None,
             timeout: float = 900) -> Outcome:
    """Run `python -m command_args...` in a child process under RLIMIT_AS = `memory_limit_bytes` (None: no cap).

    Returns (exit code, output, peak MB, seconds).
    """
    return finish(start_case(command_args, cwd, memory_limit_bytes, env), timeout)


# ---------------------------------------------------------------- hostile input: one-patient cohorts


def valid_ct(folder: Path) -> Path:
    """A small valid CT series: 8 slices of 32 x 32."""
    stored = np.random.default_rng(0).integers(900, 1300, size=(8, 32, 32), dtype=np.int16)
    write_series(folder / "ct", stored)
    return folder / "ct"


def valid_roi(folder: Path) -> Path:
    """The ROI of `valid_ct`, on its grid (.npy, axes z, y, x)."""
    mask = np.zeros((8, 32, 32), np.uint8)
    mask[2:6, 10:22, 8:24] = 1
    np.save(folder / "roi.npy", mask)
    return folder / "roi.npy"


def write_cohort(folder: Path, ct: Callable[[Path], Path] = valid_ct, roi: Callable[[Path], Path] = valid_roi,
                 header: str = "patient_id,label,ct,roi", extra: str = "") -> Path:
    """One patient, P001, benign: `ct(folder)` and `roi(folder)` write its files; `extra` ends its row."""
    folder.mkdir(parents=True)
    ct_path, roi_path = ct(folder), roi(folder)
    row = f"P001,benign,{ct_path.relative_to(folder)},{roi_path.relative_to(folder)}{extra}"
    (folder / "manifest.csv").write_text(f"{header}\n{row}\n")
    return folder / "manifest.csv"


def one_file_series(name: str, write: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """A series folder `name` of one file, named by a UID."""
    def ct(folder: Path) -> Path:
        (folder / name).mkdir()
        write(folder / name / f"{UID_NAME}.dcm")
        return folder / name
    return ct


def nifti_claim(name: str, shape=(2000, 2000, 2000)) -> Callable[[Path], Path]:
    """A NIfTI header claiming `shape` (uint8: 2000^3 is 8 GB), gzipped when `name` ends in .gz."""
    def write(folder: Path) -> Path:
        if name.endswith(".gz"):
            return write_gzip(folder / name, nifti_header(shape))
        (folder / name).write_bytes(nifti_header(shape))
        return folder / name
    return write


def nifti_zeros(folder: Path) -> Path:
    """A 1 MB .nii.gz of 1025 x 1024 x 1024 real zeros, just over the default budget."""
    return write_gzip(folder / "zeros.nii.gz", nifti_header((1025, 1024, 1024)), zeros=1025 * 1024 * 1024)


def npy_claim(folder: Path) -> Path:
    return write_npy_header(folder / "header.npy", (2000, 2000, 2000))


def mr_series(folder: Path) -> Path:
    """`valid_ct`, its files relabelled as MR images (SOP class and modality)."""
    ct = valid_ct(folder)
    (folder / "mr").mkdir()
    for path in sorted(ct.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.Modality = "MR"
        ds.save_as(folder / "mr" / path.name)
        path.unlink()
    ct.rmdir()
    return folder / "mr"


@dataclass(frozen=True)
class Case:
    name: str
    what: str  # for the table
    write: Callable[[Path], Path]  # writes the cohort into a new folder; returns its manifest
    expected: str | None  # a pattern the error must match; None: the command must succeed
    env: dict = field(default_factory=dict)


DEFLATED = one_file_series("deflated", lambda path: write_deflated_zeros(path, 60000, 60000))
CASES = [
    Case("valid_control", "control: a valid one-patient cohort (8 x 32 x 32 series)", write_cohort, None),
    Case("nifti_8gb", ".nii.gz CT, header claiming 2000^3 uint8 (8 GB), 190 bytes",
         lambda f: write_cohort(f, ct=nifti_claim("header.nii.gz")),
         r"header.nii.gz: claims 2000 x 2000 x 2000 voxels \(8.0e9\), over the budget of 1.1e9"),
    Case("nifti_8gb_roi", "the same .nii.gz as the ROI of a valid CT",
         lambda f: write_cohort(f, roi=nifti_claim("header.nii.gz")),
         r"header.nii.gz: claims 2000 x 2000 x 2000 voxels \(8.0e9\)"),
    Case("nifti_8gb_uncompressed", ".nii CT, header claiming 2000^3 (8 GB)",
         lambda f: write_cohort(f, ct=nifti_claim("header.nii")),
         r"header.nii: claims 2000 x 2000 x 2000 voxels \(8.0e9\)"),
    Case("nifti_zeros", ".nii.gz CT of 1025 x 1024 x 1024 real zeros, 1 MB",
         lambda f: write_cohort(f, ct=nifti_zeros),
         r"zeros.nii.gz: claims 1025 x 1024 x 1024 voxels \(1.1e9\), over the budget"),
    Case("nifti_zeros_roi", "the same zeros as the ROI of a valid CT",
         lambda f: write_cohort(f, roi=nifti_zeros),
         r"zeros.nii.gz: claims 1025 x 1024 x 1024 voxels \(1.1e9\), over the budget"),
    Case("npy_8gb_roi", ".npy ROI, header claiming 2000^3 (8 GB)",
         lambda f: write_cohort(f, roi=npy_claim), r"header.npy: claims 2000 x 2000 x 2000 voxels \(8.0e9\)"),
    Case("deflated_dicom", "deflated DICOM, one 60000 x 60000 frame: 3.5 MB that inflate to 3.6 GB",
         lambda f: write_cohort(f, ct=DEFLATED),
         r"deflated \(file 1 of 1\): claims 1 x 60000 x 60000 voxels \(3.6e9\)"),
    Case("deflated_dicom_budget_raised", "the same, VFRAC_MAX_VOXELS=1e10: it would inflate past what it holds",
         lambda f: write_cohort(f, ct=DEFLATED),
         r"deflated \(file 1 of 1\): header claims 1 x 60000 x 60000 x 8 bit \(3,600,000,000 bytes\), more than "
         r"3,49\d,\d{3} bytes of compressed data can hold", {"VFRAC_MAX_VOXELS": "1e10"}),
    Case("deflated_dicom_outgrown", "deflated DICOM whose 1.8 GB of pixel data outgrow its 2000 x 2000 header",
         lambda f: write_cohort(f, ct=one_file_series("outgrown", lambda path: write_deflated_zeros(
             path, 2000, 2000, pixel_bytes=1_800_000_000))),
         r"outgrown \(file 1 of 1\): its deflated data set inflates past [\d,]+ bytes, "
         "more than its header's Rows, Columns and frames claim"),
    Case("dicom_60000", "uncompressed DICOM claiming 60000 x 60000, 1.5 KB",
         lambda f: write_cohort(f, ct=one_file_series("native", lambda path: write_claim(path, 60000, 60000))),
         r"native \(file 1 of 1\): claims 1 x 60000 x 60000 voxels \(3.6e9\), over the budget"),
    Case("dicom_60000_rle", "RLE DICOM claiming 60000 x 60000",
         lambda f: write_cohort(f, ct=one_file_series("rle", lambda path: write_claim(
             path, 60000, 60000, RLELossless))),
         r"rle \(file 1 of 1\): claims 1 x 60000 x 60000 voxels \(3.6e9\), over the budget"),
    Case("manifest_repeated_column", "manifest whose header repeats `label`",
         lambda f: write_cohort(f, header="patient_id,label,ct,roi,label", extra=",malignant"),
         r"manifest.csv: column\(s\) label appear more than once in the header"),
    Case("manifest_extra_field", "manifest with a fifth field in a row of four columns",
         lambda f: write_cohort(f, extra=",roi.npy"), r"row 1 \(patient_id P001\): 5 fields, the header has 4"),
    Case("mr_series", "an MR series (MR Image Storage, Modality MR) as the CT",
         lambda f: write_cohort(f, ct=mr_series),
         r"mr: no CT image among 8 file\(s\); skipped 8 x MR Image Storage object, is MR, not CT"),
]


def write_cases(root: Path, cases=CASES) -> dict[str, Path]:
    """Each case's cohort in root/<name>/; case name: its manifest."""
    return {case.name: case.write(root / case.name) for case in cases}


def prepare_args(manifest: Path) -> list[str]:
    return ["vfrac.prepare", "--cohort", manifest, "--cache-dir", manifest.parent / "cache", "--workers", "1"]


def run_input_case(case: Case, manifest: Path, limit: int | None = INPUT_LIMIT) -> Outcome:
    return run_case(prepare_args(manifest), manifest.parent, limit, case.env, timeout=300)


# ---------------------------------------------------------------- experiments.cv faults

TINY = ["--folds", "2", "--trials", "2", "--epochs", "1", "--input-size", "32", "--arch", "resnet-tiny"]


def cv_args(manifest: Path, store: Path, *extra) -> list[str]:
    return ["experiments.cv", "--cohort", manifest, *TINY, "--tracking-uri", f"sqlite:///{store}/mlflow.db",
            "--storage", f"sqlite:///{store}/optuna.db", *extra]


def start_cv(manifest: Path, store: Path, *extra, limit: int | None = CV_LIMIT, env: dict | None = None
             ) -> subprocess.Popen:
    """`python -m experiments.cv` in a fresh process, as a user would, with `store` as its working folder."""
    store.mkdir(parents=True, exist_ok=True)
    return start_case(cv_args(manifest, store, *extra), store, limit, env)


def run_cv(manifest: Path, store: Path, *extra, limit: int | None = CV_LIMIT) -> Outcome:
    return finish(start_cv(manifest, store, *extra, limit=limit))


def wait_for_running_trial(store: Path, study_suffix: str, process, timeout=900) -> None:
    """Block until a trial of the study whose name ends with `study_suffix` is RUNNING with all its settings drawn.

    Settings are written one by one; a kill between two of them would leave the killed
    trial with only some, so wait for every one of SEARCHED (the search space without
    pretrained weights).
    """
    from experiments.tuning import SEARCHED

    deadline = time.monotonic() + timeout
    query = ("select count(*) from (select t.trial_id from trials t join studies s on t.study_id = s.study_id "
             "join trial_params p on p.trial_id = t.trial_id "
             f"where s.study_name like '%{study_suffix}' and t.state = 'RUNNING' "
             f"group by t.trial_id having count(*) >= {len(SEARCHED)})")
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the run ended before a trial of {study_suffix} ran:\n{finish(process).output}")
        if (store / "optuna.db").is_file():
            with contextlib.suppress(sqlite3.OperationalError):  # tables not yet created
                with contextlib.closing(sqlite3.connect(store / "optuna.db")) as db:
                    if db.execute(query).fetchone()[0]:
                        return
        time.sleep(0.2)
    raise TimeoutError(f"no running trial in {study_suffix}")


def killed_and_rerun(manifest: Path, store: Path, *extra) -> tuple[Outcome, Outcome]:
    """A run killed (SIGKILL) while a trial of its second fold runs, then the same command again."""
    process = start_cv(manifest, store, *extra)
    wait_for_running_trial(store, "-fold1", process)
    process.kill()
    return finish(process, timeout=60), run_cv(manifest, store, *extra)


def started_together(manifest: Path, store: Path, *extra, count: int = 2) -> list[Outcome]:
    processes = [start_cv(manifest, store, *extra) for _ in range(count)]
    return [finish(process) for process in processes]


def studies(store: Path) -> dict[str, list[tuple]]:
    """(number, state, position, params) of every trial, by fold study name suffix."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{store}/optuna.db")
    found = {}
    for summary in optuna.get_all_study_summaries(storage):
        if "-fold" in summary.study_name:
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            found[summary.study_name.rsplit("-", 1)[1]] = [
                (t.number, t.state.name, t.user_attrs.get("vfrac.trial"), t.params) for t in study.trials]
    return found


def pooled(store: Path | str, folder: Path, experiment: str = "vfrac") -> tuple[dict[str, float], list[tuple]]:
    """The CV run's pooled metrics, and its slice predictions (patient, slice, fold, probability), sorted."""
    from tests.mlflow_store import artifact_rows, runs

    client, by_role = runs(store, experiment)
    (cv_run,) = by_role["cv"]
    rows = artifact_rows(client, cv_run.info.run_id, "predictions/slices.csv", folder)
    return dict(cv_run.data.metrics), sorted(
        (r["patient_id"], int(r["slice"]), int(r["fold"]), float(r["probability"])) for r in rows)


def differences(ours, theirs) -> list[str]:
    """What differs between two `pooled` results: metric names, or 'slice predictions'; [] when equal."""
    (metrics, slices), (their_metrics, their_slices) = ours, theirs
    found = sorted(set(metrics) ^ set(their_metrics))
    found += [name for name in sorted(set(metrics) & set(their_metrics))
              if not math.isclose(metrics[name], their_metrics[name], rel_tol=0, abs_tol=1e-9)]
    if [r[:3] for r in slices] != [r[:3] for r in their_slices] or not np.allclose(
            [r[3] for r in slices], [r[3] for r in their_slices], atol=1e-6):
        found.append("slice predictions")
    return found


def trials_once(store: Path) -> bool:
    """Every fold's study finished each position of the budget exactly once, and the run pooled once."""
    from tests.mlflow_store import runs

    done = [sorted(r[2] for r in rows if r[1] == "COMPLETE") for rows in studies(store).values()]
    client, by_role = runs(store)
    (cv_run,) = by_role["cv"]
    return len(done) == 2 and all(d == [0, 1] for d in done) and len(
        client.get_metric_history(cv_run.info.run_id, "patient_auc")) == 1


def cv_rows(root: Path) -> list[list[str]]:
    """The cv faults on a fresh tiny synthetic cohort, as table rows."""
    from vfrac.synth import generate_cohort

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reading the runs back, quietly
    manifest = generate_cohort(root / "cohort", 12, seed=4, matrix=96)
    command = " ".join(["experiments.cv", *TINY, "--no-explain"])
    single = run_cv(manifest, root / "single", "--no-explain")
    reference = pooled(root / "single", root / "a")
    rows = [["uninterrupted CV run (the reference)", command, f"exit {single.code}", _mb(single.peak_mb),
             f"{single.seconds:.0f}"]]
    first, second = killed_and_rerun(manifest, root / "killed", "--no-explain")
    diff = differences(pooled(root / "killed", root / "b"), reference)
    rows.append(["kill -9 inside a trial of fold 1, then the same command", command,
                 f"exit {first.code}, then {second.code}; "
                 + (f"differs: {', '.join(diff)}" if diff else "equal numbers"),
                 f"{_mb(first.peak_mb)}, then {_mb(second.peak_mb)}", f"{first.seconds:.0f} + {second.seconds:.0f}"])
    together = started_together(manifest, root / "shared", "--no-explain")
    diff = differences(pooled(root / "shared", root / "c"), reference)
    once = "each trial once" if trials_once(root / "shared") else "trials repeated"
    rows.append(["two processes started together on one store", command,
                 f"exit {' and '.join(str(o.code) for o in together)}; {once}; "
                 + (f"differs: {', '.join(diff)}" if diff else "equal numbers"),
                 " and ".join(_mb(o.peak_mb) for o in together),
                 f"{max(o.seconds for o in together):.0f}"])
    return rows


# ---------------------------------------------------------------- the table


def _mb(value: float) -> str:
    return "killed, not measured" if math.isnan(value) else f"{value:,.0f}"


def outcome_text(outcome: Outcome, root: Path) -> str:
    error = " ".join(line.strip() for line in outcome.error().splitlines())  # a manifest's problems: one a line
    text = f"exit {outcome.code}" + (f": `{error}`" if error else "")
    return text.replace(f"{root}/", "").replace("|", "\\|")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", action="store_true", help="also the faults of experiments.cv (a few minutes)")
    parser.add_argument("--limit-gb", type=float, default=INPUT_LIMIT / GIB,
                        help="address-space cap of each hostile-input case (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{datetime.date.today().isoformat()}; hostile input under RLIMIT_AS {args.limit_gb:g} GiB\n")
    print("| case | command | outcome | peak memory MB | seconds |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        manifests = write_cases(root / "input")
        for case in CASES:
            outcome = run_input_case(case, manifests[case.name], int(args.limit_gb * GIB))
            env = "".join(f"{k}={v} " for k, v in case.env.items())
            print(f"| {case.what} | `{env}vfrac.prepare --workers 1` | {outcome_text(outcome, root / 'input')} | "
                  f"{_mb(outcome.peak_mb)} | {outcome.seconds:.1f} |", flush=True)
        if args.cv:
            for row in cv_rows(root / "cv"):
                print(f"| {row[0]} | `{row[1]}` | {' | '.join(row[2:])} |", flush=True)


if __name__ == "__main__":
    main()
