"""What sharing a CV run costs: claims and trials on PostgreSQL vs SQLite, and 1, 2, 3 workers on one run.

    python bench/bench_scale.py [--repeats 40] [--trials 4]

Starts its own PostgreSQL and MLflow servers (tests/servers.py; or uses those of
$VFRAC_TEST_SERVERS). First, in this process: the time to claim a unit (a claim
taken and released, experiments.claims) and to record a trial (claimed, its
settings drawn, its value told) on a SQLite file and on PostgreSQL, medians of
`--repeats`. Then `python -m experiments.cv` on the tiny network (12 patients,
2 folds, `--trials` trials, 1 epoch, input 32) with 1, 2 and 3 workers started
together against PostgreSQL and the MLflow server: trials per minute (completed
trials over the span from the first trial's start to the last one's end) and the
share of a worker's time spent waiting for units others hold (its "waiting" over
its "total" on the command's time line). On a 2-core machine more workers do not
run faster: the ratio shows what the coordination costs, not a speed-up.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench import bench_faults as faults  # noqa: E402
from bench.bench_load import cpu_name  # noqa: E402


def median_ms(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def storage_figures(url: str, repeats: int) -> dict[str, float]:
    import optuna

    from experiments.claims import Claims
    from experiments.stores import open_storage
    from experiments.tuning import claim_trial, fold_study, suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    claims = Claims(storage, "bench")
    counter = iter(range(10**6))

    def claim():
        with claims.hold(f"unit{next(counter)}"):
            pass

    study = fold_study(storage, "bench-fold", pruner="median")

    def record():
        trial, _, _ = claim_trial(storage, study, budget=10**6, seed=0)
        suggest(trial, pretrained=False)
        study.tell(trial, 0.5)

    return {"claim a unit": median_ms(claim, repeats), "record a trial": median_ms(record, repeats)}


def workers_figures(servers, manifest: Path, count: int, trials: int, folder: Path) -> dict[str, float]:
    import optuna

    from experiments.stores import open_storage

    name = f"scale{count}_{uuid.uuid4().hex[:6]}"
    url = servers.new_database(name)
    args = ["experiments.cv", "--cohort", manifest, *faults.TINY, "--trials", str(trials), "--no-explain",
            "--storage", url, "--tracking-uri", servers.mlflow_url, "--experiment", name]
    started = time.perf_counter()
    outcomes = [faults.finish(p) for p in [faults.start_case(args, folder, faults.CV_LIMIT) for _ in range(count)]]
    wall = time.perf_counter() - started
    if any(o.code for o in outcomes):
        raise RuntimeError("\n".join(o.output for o in outcomes))
    done = [t for s in optuna.get_all_study_summaries(open_storage(url)) if "-fold" in s.study_name
            for t in optuna.load_study(study_name=s.study_name, storage=open_storage(url)).trials
            if t.state.name == "COMPLETE"]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    shares = []
    for outcome in outcomes:
        line = re.search(r"^time: (.*)$", outcome.output, re.M).group(1)
        parts = dict(re.findall(r"(\w+) (\d+) s", line))
        shares.append(float(parts.get("waiting", 0)) / float(parts["total"]))
    return {"trials": len(done), "trials_per_minute": 60 * len(done) / span, "waiting_share": statistics.mean(shares),
            "wall": wall}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--trials", type=int, default=4, help="trials per fold of each worker run")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", message=".*(experimental|fail_stale_trials).*")
    from tests.servers import ENV, Servers, start
    from vfrac.synth import generate_cohort

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        own = not os.environ.get(ENV)
        servers = start(scratch / "servers") if own else Servers.load(os.environ[ENV])
        try:
            sqlite = storage_figures(f"sqlite:///{scratch}/optuna.db", args.repeats)
            postgres = storage_figures(servers.new_database(f"micro_{uuid.uuid4().hex[:6]}"), args.repeats)
            manifest = generate_cohort(scratch / "cohort", 12, seed=4, matrix=96)
            runs = {n: workers_figures(servers, manifest, n, args.trials, scratch) for n in (1, 2, 3)}
        finally:
            if own:
                servers.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}; commit {commit}; "
          f"{datetime.date.today()}\n")
    print("| operation | SQLite file, ms | PostgreSQL 127.0.0.1, ms | PostgreSQL / SQLite |\n| --- | --- | --- | --- |")
    for name in sqlite:
        print(f"| {name} | {sqlite[name]:.1f} | {postgres[name]:.1f} | {postgres[name] / sqlite[name]:.2f} |")
    print("\n| workers | trials done | trials per minute | vs 1 worker | waiting share | wall, s |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for n, figures in runs.items():
        print(f"| {n} | {figures['trials']} | {figures['trials_per_minute']:.1f} | "
              f"{figures['trials_per_minute'] / runs[1]['trials_per_minute']:.2f} | "
              f"{figures['waiting_share']:.0%} | {figures['wall']:.0f} |")


if __name__ == "__main__":
    main()
