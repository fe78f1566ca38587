"""The CV run end to end: cohort and cache, run tree, splits, folds, pooled results."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import optuna
from tqdm import tqdm

import vfrac
from experiments.claims import Claims
from experiments.config import DEMO_COHORT, RunConfig
from experiments.fold_data import FoldData
from experiments.results import (
    BASELINE_COLUMNS,
    EXCLUDED_COLUMNS,
    PATIENT_COLUMNS,
    SLICE_COLUMNS,
    baseline_comparison,
    baseline_metrics,
    cv_metrics,
    patient_rows,
    per_fold,
    plots,
    pooled,
    read_rows,
    summary_markdown,
    write_rows,
)
from experiments.stores import StoreUnavailable, masked, retried
from experiments.study_report import write_report
from experiments.tracking import Tracker
from explain.run_review import review
from vfrac.cohort import read_manifest
from vfrac.data.cache import cohort_hash, prepare_cohort, slice_counts
from vfrac.data.splits import load_splits, outer_folds, save_splits
from vfrac.errors import InputError
from vfrac.prepare import SLICE_REPORT_NAME, slice_rule_summary, write_slice_report
from vfrac.run_tree import (
    BASELINE_PREDICTIONS,
    CODE_VERSION_TAG,
    COHORT_HASH_TAG,
    CONFIG,
    EXCLUDED,
    FOLD_ROLE,
    FOLD_TAG,
    GIT_COMMIT_TAG,
    POOLED_TAG,
    PRESET_TAG,
    SETTINGS_KEY_TAG,
    SLICE_PREDICTIONS,
    SPLITS,
    SUMMARY,
)
from vfrac.synth import DEMO, generate_cohort

TEMPORARY_FAILURE = 75  # sysexits' EX_TEMPFAIL: a store was lost; the same command later continues the run


def quiet() -> None:
    """Keep the console to what a user needs: our progress lines, warnings that matter."""

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # TensorFlow's own logger, whenever it loads
    for message in ("`shuffle=True` was passed", "Your input ran out of data", "fail_stale_trials"):
        warnings.filterwarnings("ignore", message=f".*{message}.*")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run(config: RunConfig, tracker: Tracker, storage) -> int:
    """The whole run on its open stores (experiments.tracking.open_stores); 0 when this process's part is done,
    75 when a store was lost (the same command continues)."""
    try:
        return cross_validation(config, tracker, storage)
    except StoreUnavailable as error:
        print(f"error: {error}\nfinished folds and trials are kept; run the same command again to continue",
              file=sys.stderr)
        return TEMPORARY_FAILURE


def cross_validation(config: RunConfig, tracker: Tracker, storage) -> int:
    quiet()
    started, timings = time.perf_counter(), Counter()
    print(f"vfrac cross-validation, preset {config.preset}: {config.protocol.folds} folds, "
          f"{config.tuning.trials} trials, "
          f"{config.training.epochs} epochs, input {config.model.input_size}, seed {config.seed}")
    stores = config.stores
    print(f"cohort {config.cohort}\ntracking {masked(stores.tracking_uri)}\noptuna {masked(stores.storage)}")
    t = time.perf_counter()
    data, cohort_hash = prepare(config)
    timings["preparation"] = time.perf_counter() - t
    code, settings = code_version(), config.key(cohort_hash)
    key = hashlib.sha256(f"{settings} {code}".encode()).hexdigest()[:16]
    claims = Claims(storage, key)
    cv_run, resumed = the_cv_run(config, tracker, claims, key, cohort_hash, code, settings)
    try:
        finished, spent = cross_validate(config, data, tracker, claims, storage, cv_run, key)
        timings.update(spent)
    except BaseException as error:
        tracker.fail(cv_run, error)
        raise
    tracker.finish(cv_run, done=finished)
    if not finished:
        print("pooled results wait for the other folds; run again without --fold, or run the remaining folds"
              + (" (the final model waits for them too)" if config.final else ""))
    elif config.final:  # after the CV run is closed: a failure here leaves its finished results as they are
        from experiments.final import registered_final_model  # TensorFlow-free runs never load it

        timings.update(registered_final_model(config, data, storage, tracker, claims, cv_run, key)[1])
    if claims.waited:
        timings["waiting"] = claims.waited
    timings["total"] = time.perf_counter() - started
    print("time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    print("\n".join(tracker.browse_lines(cv_run)))
    return 0


def the_cv_run(config: RunConfig, tracker: Tracker, claims: Claims, key: str, cohort_hash: str, code: str,
               settings: str) -> tuple[str, bool]:
    """The CV run of this key: (its id, whether it existed). Made under a claim, so workers starting together
    make one."""
    resumed = tracker.find_cv_run(key) is not None
    tags = {COHORT_HASH_TAG: cohort_hash, GIT_COMMIT_TAG: git_commit(), CODE_VERSION_TAG: code,
            SETTINGS_KEY_TAG: settings, PRESET_TAG: config.preset}
    claims.once("cv-run", lambda: tracker.find_cv_run(key) is not None,
                lambda: tracker.create_cv_run(key, tags, name=f"cv {config.preset} {key[:6]}"))
    cv_run = tracker.find_cv_run(key)
    print(("resuming" if resumed else "new") + f" CV run {cv_run}")
    if not resumed:
        for other in tracker.cv_runs_of_other_code(settings, key):
            print(f"note: CV run {other.info.run_id} has these settings and this cohort but ran other code "
                  f"({other.data.tags.get(CODE_VERSION_TAG, 'unknown version')}); its folds are not reused")
    return cv_run, resumed


def cross_validate(config: RunConfig, data: FoldData, tracker: Tracker, claims: Claims, storage, cv_run: str,
                   key: str) -> tuple[bool, Counter]:
    """Every fold this process can do, then (once all are done) the pooled results, review and report.

    Folds that other processes are working on are left to them and visited again until
    done; returns whether the pooled results exist, and the seconds this process spent by phase.
    """
    if tracker.is_done(cv_run):
        print("every fold and the pooled results are already done:\n")
        print(tracker.read_text(cv_run, SUMMARY))
        return True, review_and_report(config, tracker, claims, cv_run)
    from vfrac.model.network import active_conv_gradient  # TensorFlow loads here: a finished run never needs it

    tracker.restart(cv_run)
    tracker.params(cv_run, config.as_params() | library_versions()
                   | {"conv_gradient_active": active_conv_gradient(config.model.conv_gradient)})
    splits = fold_splits(config, data, tracker, claims, cv_run)
    pending, waiting = [config.fold] if config.fold is not None else list(range(config.protocol.folds)), []
    spent = Counter()
    while pending:
        busy = []
        for fold in pending:
            done, seconds = work_on_fold(config, fold, splits[fold], data, storage, tracker, claims, cv_run, key,
                                         first_visit=fold not in waiting)
            spent.update(seconds)
            if not done:
                busy.append(fold)
        if busy:
            if busy != waiting:
                print(f"fold(s) {', '.join(map(str, busy))}: other processes are working on them; waiting",
                      flush=True)
            claims.wait()
        pending, waiting = busy, busy
    if config.tuning.trials:
        pruning = [r.data.metrics for r in tracker.children(cv_run, FOLD_ROLE)]
        print(f"pruning: {sum(m.get('trials_pruned', 0) for m in pruning):.0f} trial(s) pruned, "
              f"{sum(m.get('epochs_saved', 0) for m in pruning):.0f} epoch(s) saved")
    if not all_folds_done(config, tracker, cv_run):
        return False, spent
    claims.once("pooled", lambda: tracker.tag(cv_run, POOLED_TAG) is not None,
                lambda: write_pooled(config, tracker, cv_run))
    print(f"\npooled out-of-fold results, {tracker.tag(cv_run, POOLED_TAG)}:\n\n"
          f"{tracker.read_text(cv_run, SUMMARY)}")
    spent.update(review_and_report(config, tracker, claims, cv_run))
    return True, spent


def work_on_fold(config: RunConfig, fold: int, split, data: FoldData, storage, tracker: Tracker, claims: Claims,
                 cv_run: str, key: str, first_visit: bool) -> tuple[bool, Counter]:
    """Tune and train this fold as far as this process can; returns whether the fold is done and the seconds
    this process spent on it by phase."""
    from experiments.protocol import final_model, fold_unit, tune  # TensorFlow loads here, only to train

    fold_run, spent = tracker.child_run(cv_run, FOLD_ROLE, {FOLD_TAG: fold}, name=f"fold {fold}"), Counter()
    if tracker.is_done(fold_run):
        if first_visit:
            print(f"fold {fold}: already done, reused")
        return True, spent
    if first_visit:
        print(f"fold {fold}: {len(split.train)} training patients"
              + (" (tuned on these only)" if config.tuning.trials else "") + f", {len(split.test)} test patients")
    try:
        tracker.restart(fold_run)
        study = None
        if config.tuning.trials:
            started = time.perf_counter()
            study = tune(config, fold_unit(fold), split, data, storage, tracker, fold_run, key)
            spent["tuning"] = time.perf_counter() - started
            if study is None:  # trials of other processes still run
                return False, spent

        def train() -> None:
            rows, seconds = final_model(config, fold, split, data, study, tracker, fold_run)
            spent.update(seconds)
            print(f"fold {fold}: done; {len({r['patient_id'] for r in rows})} test patients predicted")

        return claims.once(f"fold{fold}", lambda: tracker.is_done(fold_run), train, wait=False), spent
    except BaseException as error:
        tracker.fail(fold_run, error)
        raise


def prepare(config: RunConfig) -> tuple[FoldData, str]:
    """The cohort (the demo is written first if absent) and its crop cache; returns the data and cohort hash."""


    manifest = Path(config.cohort)
    if config.preset == "demo" and manifest == DEMO_COHORT.resolve():

        with tqdm(total=DEMO["patients"], unit="patient", desc="demo cohort", disable=manifest.is_file()) as bar:
            generate_cohort(manifest.parent, seed=0, workers=config.workers, on_progress=bar.update, **DEMO)
    if not manifest.is_file():
        raise InputError(f"{manifest}: cohort manifest not found")
    cohort = read_manifest(manifest, allow_outside=config.allow_outside, skip_bad=config.skip_bad)
    with tqdm(total=len(cohort.patients), unit="patient", desc="prepare") as bar:
        result = prepare_cohort(cohort.patients, config.crops, config.cache_dir, workers=config.workers,
                                skip_bad=config.skip_bad, on_progress=lambda *_: bar.update())
    label_of = {p.patient_id: p.label for p in cohort.patients}
    excluded = ([{"patient_id": "", "label": "", "reason": problem} for problem in cohort.problems]
                + [{"patient_id": pid, "label": label_of[pid], "reason": reason}
                   for pid, reason in sorted(result.failures.items())])
    if excluded:
        print(f"--skip-bad: left out {len(excluded)} patient(s) or manifest row(s):")
        for row in excluded:
            print(f"  {row['patient_id'] or '(row)'}: {row['reason']}")
    labels = {p.patient_id: int(p.is_malignant) for p in cohort.patients if p.patient_id in result.entries}
    if len(labels) < 2:
        raise InputError(f"{manifest}: {len(labels)} patient(s) left to analyse")
    counts = slice_counts(result.entries)
    print(slice_rule_summary(counts, config.crops.min_area))
    data = FoldData(entries=result.entries, labels=labels, slice_counts=counts, excluded=excluded,
                    cohort_hash=cohort_hash(manifest, result.entries))
    return data, data.cohort_hash


def fold_splits(config: RunConfig, data: FoldData, tracker: Tracker, claims: Claims, cv_run: str):
    """The run's splits: made and logged once (with the config, slice report and fold runs), then read back."""

    claims.once("splits", lambda: tracker.has_artifact(cv_run, SPLITS),
                lambda: log_splits(config, data, tracker, cv_run))
    with tempfile.TemporaryDirectory() as folder:
        return load_splits(tracker.download(cv_run, SPLITS, Path(folder)))


def log_splits(config: RunConfig, data: FoldData, tracker: Tracker, cv_run: str) -> None:

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        ids = sorted(data.labels)
        splits = outer_folds(ids, [data.labels[p] for p in ids], config.protocol.folds, config.seed)
        (folder / CONFIG).write_text(json.dumps(config.as_params(), indent=1) + "\n")
        tracker.artifacts(cv_run, folder / CONFIG)
        write_slice_report(folder / SLICE_REPORT_NAME, data.slice_counts, config.crops.min_area)
        tracker.artifacts(cv_run, folder / SLICE_REPORT_NAME)
        write_rows(folder / EXCLUDED, data.excluded, EXCLUDED_COLUMNS)  # header only when none
        tracker.artifacts(cv_run, folder / EXCLUDED)
        for fold in range(config.protocol.folds):  # made here, once, so processes starting together share them
            tracker.schedule(tracker.child_run(cv_run, FOLD_ROLE, {FOLD_TAG: fold}, name=f"fold {fold}"))
        save_splits(folder / SPLITS, splits)
        tracker.artifacts(cv_run, folder / SPLITS)  # last: its presence says the rest is there


def all_folds_done(config: RunConfig, tracker: Tracker, cv_run: str) -> bool:
    done = {r.data.tags[FOLD_TAG] for r in tracker.children(cv_run, FOLD_ROLE) if tracker.is_done(r.info.run_id)}
    return len(done) == config.protocol.folds


def write_pooled(config: RunConfig, tracker: Tracker, cv_run: str) -> None:
    """Pooled tables, metrics, plots and summary on the CV run, then the tag that says they are there."""
    folds = {int(r.data.tags[FOLD_TAG]): r.info.run_id for r in tracker.children(cv_run, FOLD_ROLE)
             if tracker.is_done(r.info.run_id)}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        rows, baseline_rows = [], []
        for fold, run_id in sorted(folds.items()):
            rows += read_rows(tracker.download(run_id, SLICE_PREDICTIONS, folder / f"fold{fold}"))
            baseline_rows += read_rows(tracker.download(run_id, BASELINE_PREDICTIONS, folder / f"fold{fold}"))
        patients = patient_rows(rows, config.protocol.threshold, config.protocol.aggregation)
        rule = config.protocol
        result = pooled(rows, rule.threshold, rule.aggregation, rule.n_boot, config.seed)
        spread = per_fold(rows, config.protocol.threshold, config.protocol.aggregation)
        baseline = baseline_comparison(baseline_rows, patients, rule.threshold, rule.n_boot, config.seed)
        out = folder / "out"
        (out / "predictions").mkdir(parents=True)
        write_rows(out / "predictions" / "slices.csv", rows, SLICE_COLUMNS)
        write_rows(out / "predictions" / "patients.csv", patients, PATIENT_COLUMNS)
        write_rows(out / "predictions" / "baseline.csv", baseline_rows, BASELINE_COLUMNS)
        plots(out / "plots", rows, patients, config.protocol.threshold)
        summary = summary_markdown(result, spread, config.protocol.aggregation, config.protocol.threshold, baseline)
        (out / SUMMARY).write_text(f"# vfrac cross-validation ({config.preset})\n\n{summary}")
        tracker.artifacts(cv_run, out)
        tracker.metrics(cv_run, cv_metrics(result) | baseline_metrics(baseline))
    tracker.set_tag(cv_run, POOLED_TAG, f"{len(patients)} patients, {len(rows)} slices")


def review_and_report(config: RunConfig, tracker: Tracker, claims: Claims, cv_run: str) -> Counter:
    """What a finished CV run still lacks: the Grad-CAM review (unless --no-explain), the study report.

    Each reads and writes the store through its own client: done again from the start while the store is lost.
    Returns the seconds this process spent explaining.
    """
    again, spent = {"store": tracker.store, "patience": config.stores.store_timeout}, Counter()
    if config.explain:
        claims.once("review", lambda: tracker.has_artifact(cv_run, "review/index.html"),
                    lambda: spent.update(explanation=retried(explain, config, cv_run, **again)))
    claims.once("report", lambda: tracker.has_artifact(cv_run, "report/report.md"),
                lambda: retried(report, config, cv_run, **again))
    return spent


def explain(config: RunConfig, cv_run: str) -> float:
    """Grad-CAM review of every fold model on its test patients, logged to the CV run."""

    started = time.perf_counter()
    print("\nexplanation: Grad-CAM and HiResCAM on each test patient's top slices (--no-explain skips)", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        review(cv_run, config.stores.tracking_uri, layer=config.cam_layer, out=Path(folder))
    print("review page: review/index.html in the CV run's artifacts")
    return time.perf_counter() - started


def report(config: RunConfig, cv_run: str) -> None:
    """The study's tables (experiments.report), logged to the CV run."""

    with tempfile.TemporaryDirectory() as folder:
        write_report(cv_run, config.stores.tracking_uri, Path(folder))
    print("study report: report/report.md and report/report.html in the CV run's artifacts")


def git_commit() -> str:
    return _git("rev-parse", "HEAD") or "unknown"


def code_version() -> str:
    """The package version and git commit, with a digest of uncommitted changes when the tree is dirty.

    Part of the run key: a rerun after the code changed starts a new CV run instead of
    pooling folds computed by other code.
    """

    commit = _git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return vfrac.__version__
    changes = _git("status", "--porcelain", "--untracked-files=normal")
    if not changes:
        return f"{vfrac.__version__}+g{commit}"
    digest = hashlib.sha256((changes + (_git("diff", "HEAD") or "")).encode()).hexdigest()[:8]
    return f"{vfrac.__version__}+g{commit}.dirty.{digest}"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def library_versions() -> dict[str, str]:

    versions = {}
    for package in ("tensorflow", "keras", "pydicom", "optuna", "mlflow", "numpy", "scikit-learn"):
        try:
            versions[f"version_{package}"] = version(package)
        except PackageNotFoundError:
            versions[f"version_{package}"] = "absent"
    return versions


