"""Make a whole synthetic cohort: labels, patients (in parallel), readers, manifest.

The cohort is written to a temporary folder beside the target and renamed into place
when complete, so an interrupted run never leaves a cohort that looks finished. The
parameters are kept in `synth.json`, so asking again for the same cohort does nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from vfrac.synth.anatomy import render
from vfrac.synth.params import FEATURES, SAME_SITE, Site, draw_lesion, draw_scan, reader_calls
from vfrac.synth.writer import write_masks, write_series

GENERATOR_VERSION = 1
# The built-in demo's cohort: every generator setting but the seed. 256 x 256 doubles the
# pixel size of a 512 matrix (1.2-1.8 mm), still finer than the network's 64 px input
# sees a vertebra, and makes writing and reading the cohort four times faster.
DEMO = {"patients": 120, "malignant_fraction": 0.68, "difficulty": 0.3, "matrix": 256}
# Where `python -m experiments.cv` writes and reads the demo's cohort (experiments.config.DEMO_COHORT's
# folder, relative to the folder commands run in), with this seed.
DEMO_FOLDER = Path("data/demo")
DEMO_SEED = 0
MATRIX_RANGE = (16, 1024)  # image rows and columns: smaller shows no anatomy, larger takes gigabytes a patient


def patient_id(index: int) -> str:
    return f"VF{index + 1:04d}"


def cohort_labels(patients: int, malignant_fraction: float, seed: int) -> list[str]:
    """Exactly round(N x F) malignant patients, in a seeded random order."""
    malignant = int(round(patients * malignant_fraction))
    labels = np.array(["malignant"] * malignant + ["benign"] * (patients - malignant))
    return [str(label) for label in np.random.default_rng([seed, 0]).permutation(labels)]


def make_patient(out: Path, index: int, label: str, seed: int, difficulty: float, matrix: int,
                 site: Site = SAME_SITE) -> dict:
    """Render and write one patient; returns its manifest fields and lesion hardness."""
    pid = patient_id(index)
    scan = site.apply(draw_scan(np.random.default_rng([seed, index + 1, 1]), matrix=matrix))
    lesion = draw_lesion(np.random.default_rng([seed, index + 1, 2]), label, difficulty)
    rendered = render(scan, lesion, np.random.default_rng([seed, index + 1, 3]))
    folder = out / pid
    write_series(folder / "ct", scan, rendered.hu, key=f"{seed}-{pid}")
    paths = write_masks(folder, scan, rendered)
    row = {"patient_id": pid, "label": label, "ct": f"{pid}/ct", "roi": f"{pid}/roi.nii.gz", "vertebra": scan.target}
    row.update({f"feature_{name}": int(lesion.shows(name)) for name in FEATURES})
    row.update({f"mask_{name}": f"{pid}/{paths[name].name}" for name in FEATURES})
    return {"row": row, "hardness": lesion.hardness}


def generate_cohort(out, patients: int, seed: int = 0, malignant_fraction: float = 0.68,
                    difficulty: float = 0.3, matrix: int = 512, workers: int = 1,
                    overwrite: bool = False, on_progress=None, site: Site = SAME_SITE) -> Path:
    """Write the cohort to `out`; returns the manifest's path. `site` shifts every CT as another
    hospital's scanner would (same patients and lesions for the same seed)."""
    out = Path(out)
    if patients < 1:
        raise ValueError(f"patients must be >= 1, received {patients}")
    if not 0.0 <= malignant_fraction <= 1.0 or not 0.0 <= difficulty <= 1.0:
        raise ValueError("malignant fraction and difficulty must lie in [0, 1], "
                         f"received {malignant_fraction}, {difficulty}")
    if not MATRIX_RANGE[0] <= matrix <= MATRIX_RANGE[1]:
        raise ValueError(f"matrix must be {MATRIX_RANGE[0]} to {MATRIX_RANGE[1]} pixels, received {matrix}")
    recipe = {"version": GENERATOR_VERSION, "patients": patients, "seed": seed,
              "malignant_fraction": malignant_fraction, "difficulty": difficulty, "matrix": matrix}
    if site != SAME_SITE:  # a default cohort keeps the recipe it always had
        recipe["site"] = dataclasses.asdict(site)
    if _recipe(out) == recipe and (out / "manifest.csv").is_file() and not overwrite:
        return out / "manifest.csv"  # this very cohort is already there
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists, is not empty and holds no cohort made with these settings; "
                              "choose another folder or overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = cohort_labels(patients, malignant_fraction, seed)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        jobs = [(staging, i, labels[i], seed, difficulty, matrix, site) for i in range(patients)]
        results = _run(jobs, workers, on_progress)
        calls = reader_calls(np.random.default_rng([seed, 0, 9]), labels, np.array([r["hardness"] for r in results]))
        rows = [r["row"] | {reader: calls[reader][i] for reader in calls} for i, r in enumerate(results)]
        with open(staging / "manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        (staging / "synth.json").write_text(json.dumps(recipe, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "manifest.csv"


def _recipe(out: Path):
    try:
        return json.loads((out / "synth.json").read_text())
    except (OSError, ValueError):
        return None


def _run(jobs, workers, on_progress):
    if workers <= 1:
        results = []
        for job in jobs:
            results.append(make_patient(*job))
            if on_progress:
                on_progress()
        return results
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(make_patient, *job) for job in jobs]
        try:
            for future in futures:
                future.result()
                if on_progress:
                    on_progress()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        return [future.result() for future in futures]
