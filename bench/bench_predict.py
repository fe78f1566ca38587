"""Seconds for one patient with `experiments.predict`, per stage: cold (first call) against warm.

Run by hand with a model vfrac logged, e.g. the demo's final model:
`.venv/bin/python bench/bench_predict.py --model models:/vfrac-resnet50/1 [--tracking-uri URI] [--repeats 3]`.
Each round predicts the two real CTs a clone carries (the JPEG 2000 DICOM series with
its T12 label, the NIfTI CT with TotalSegmentator's map and L1) in this process; the
first round pays TensorFlow's start-up and tracing, later rounds are what a service
keeping the model loaded would pay. A fresh process (what a user of the command waits,
imports included) is timed once at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.predict import main as predict  # noqa: E402

REAL = ROOT / "examples" / "real-ct"
PATIENTS = {
    "DICOM series (T12)": ["--ct", str(REAL / "abdomen-t11-t12-dicom"), "--roi",
                           str(REAL / "abdomen-t11-t12-labels.nii.gz"), "--roi-label", "32"],
    "NIfTI + TotalSegmentator (L1)": ["--ct", str(REAL / "abdomen-pelvis-ct.nii.gz"), "--segmentation",
                                      str(REAL / "abdomen-pelvis-vertebrae.nii.gz"), "--vertebra", "L1"],
}


def once(model: list[str], patient: list[str], out: Path) -> dict:
    started = time.perf_counter()
    if predict([*model, *patient, "--out", str(out)]) != 0:
        raise SystemExit("predict failed")
    seconds = json.loads((out / "prediction.json").read_text())["seconds"]
    return seconds | {"total": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--tracking-uri")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # "retracing": each round loads the model anew
    model = ["--model", args.model] + (["--tracking-uri", args.tracking_uri] if args.tracking_uri else [])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as folder:
        for name, patient in PATIENTS.items():
            rounds = [once(model, patient, Path(folder) / f"{name[:5]}{k}") for k in range(1 + args.repeats)]
            cold, warm = rounds[0], rounds[1:]
            print(f"\n{name}: seconds, cold (first call in the process) / warm (median of {args.repeats})")
            for stage in cold:
                median = statistics.median(r[stage] for r in warm)
                ratio = f"{cold[stage] / median:5.1f}x" if median > 0 else "    -"
                print(f"  {stage:16s} {cold[stage]:6.3f} / {median:6.3f}   cold/warm {ratio}")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "experiments.predict", *model, *PATIENTS["DICOM series (T12)"],
                        "--out", str(Path(folder) / "fresh")], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print(f"\nfresh process, DICOM series, imports included: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
