"""Does the demo learn? The demo preset on several synthetic cohorts of the demo's settings.

    python bench/bench_learning.py [--seeds 1 2 3] [--out /tmp/vfrac-learning] [--explain] [-- CV FLAGS]

For each seed: writes the cohort (`python -m vfrac.synth --demo --seed S`), runs
`python -m experiments.cv --cohort ...` (the demo preset) in a fresh process with its
own stores, and prints the pooled out-of-fold per-patient AUC of the network under the
max, mean and top-3 mean of its slices, the radiomics baseline's AUC on the same
patients, DeLong's p, and the command's wall time; with `--explain`, also where the
Grad-CAM maps of correctly called malignant patients sit: the median, over their
explained slices that show the feature, of the map's energy share on the feature's mask
over the mask's area share (bone destruction and pedicle involvement). One seed says
little: the spread over seeds is the point.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.results import read_rows  # noqa: E402
from vfrac.stats.metrics import AGGREGATIONS, aggregate, auc  # noqa: E402
from vfrac.stats.statistics import delong_test  # noqa: E402

ATTENTION_FEATURES = ("bone_destruction", "pedicle_involvement")


def run_seed(seed: int, out: Path, explain: bool, extra=()) -> dict:
    cohort = out / f"cohort-{seed}"
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-m", "vfrac.synth", "--demo", "--out", str(cohort), "--seed", str(seed)],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = out / f"store-{seed}{'-' + '-'.join(extra).replace('--', '') if extra else ''}"
    store.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "experiments.cv", "--cohort", str(cohort / "manifest.csv"),
               "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--storage", f"sqlite:///{store}/optuna.db",
               *([] if explain else ["--no-explain"]), *extra]
    started = time.perf_counter()
    log = subprocess.run(command, cwd=store, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (store / "cv.log").write_text(log.stdout + log.stderr)
    if log.returncode:
        raise SystemExit(f"seed {seed}: experiments.cv failed, see {store / 'cv.log'}")
    return {"seconds": seconds} | scores(store, explain)


def scores(store: Path, explain: bool = False) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("vfrac")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`vfrac.role` = 'cv'")
    folder = store / "artifacts-read"
    slices = read_rows(Path(client.download_artifacts(run.info.run_id, "predictions/slices.csv", str(folder))))
    baseline = {r["patient_id"]: r["probability"] for r in
                read_rows(Path(client.download_artifacts(run.info.run_id, "predictions/baseline.csv", str(folder))))}
    result = {}
    for method in AGGREGATIONS:
        ids, labels, probabilities = aggregate([r["patient_id"] for r in slices], [r["probability"] for r in slices],
                                               [r["label"] for r in slices], method)
        result[method] = auc(labels, probabilities)
        result["baseline"] = auc(labels, [baseline[p] for p in ids])
        result[f"delong_{method}"] = delong_test(labels, probabilities, [baseline[p] for p in ids])["p"]
    if explain:
        patients = read_rows(Path(client.download_artifacts(run.info.run_id, "predictions/patients.csv", str(folder))))
        attention = read_rows(Path(client.download_artifacts(run.info.run_id, "explain/attention.csv", str(folder))))
        result |= attention_ratios(patients, attention)
    return result


def attention_ratios(patients: list[dict], attention: list[dict], method: str = "gradcam") -> dict:
    """Median energy/area ratio and slice count per feature, over the explained slices of correctly called
    malignant patients on which the feature is present."""
    hits = {p["patient_id"] for p in patients if int(p["label"]) == 1 and int(p["prediction"]) == 1}
    result = {}
    for feature in ATTENTION_FEATURES:
        ratios = [float(r["ratio"]) for r in attention if r["patient_id"] in hits and r["method"] == method
                  and r["feature"] == feature and float(r["area_fraction"]) > 0 and r["ratio"] not in ("", "nan")]
        result[f"ratio_{feature}"] = float(np.median(ratios)) if ratios else float("nan")
        result[f"slices_{feature}"] = len(ratios)
    return result


def table_row(name, row: dict) -> str:
    attention = "".join(f" {row[f'ratio_{f}']:.2f} ({row[f'slices_{f}']:.0f}) |" for f in ATTENTION_FEATURES
                        if f"ratio_{f}" in row)
    return (f"| {name} | {row['max']:.3f} | {row['mean']:.3f} | {row['topk']:.3f} | {row['baseline']:.3f} | "
            f"{row['delong_max']:.3f} | {row['delong_mean']:.3f} | {row['seconds']:.0f} s |{attention}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("/tmp/vfrac-learning"))
    parser.add_argument("--explain", action="store_true", help="include the Grad-CAM review in the timing")
    parser.add_argument("cv_flags", nargs="*", help="after --: flags for experiments.cv, e.g. -- --epochs 10")
    args = parser.parse_args()
    ratios = "".join(f" Grad-CAM ratio, {f.replace('_', ' ')} (slices) |" for f in ATTENTION_FEATURES) \
        if args.explain else ""
    print("| seed | network max | network mean | network top-3 | baseline | DeLong p, max vs baseline | "
          f"DeLong p, mean vs baseline | wall |{ratios}")
    print("| --- " * (8 + (len(ATTENTION_FEATURES) if args.explain else 0)) + "|")
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(seed, args.out, args.explain, args.cv_flags))
        print(table_row(seed, rows[-1]), flush=True)
    print(table_row("mean", {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}))


if __name__ == "__main__":
    main()
