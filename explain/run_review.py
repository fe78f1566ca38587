"""The review of a CV run: where each fold model looked, for radiologists.

For every test patient of every finished fold, the slices with the highest
probability are explained with each method: overlays on the crop and on the whole
axial slice of the evidence for the call and for the other class, attention against the
cohort's feature masks, which of the three slices drove the call, a randomisation sanity
check of each method and its faithfulness (deletion and insertion). Everything is
written under `out` (explain/ and review/, as in the run's artifact tree) and logged
to the CV run, so the MLflow UI lists review/index.html with its images.
"""

from __future__ import annotations

import csv
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from explain.attention import COLUMNS, SUMMARY_COLUMNS, summarize
from explain.faithfulness import faithfulness
from explain.methods import DEFAULT_LAYER
from explain.page import FAITHFULNESS_NOTE, write_page
from explain.render import RenderJob, render, renderer
from explain.runs import cv_run, finished_folds
from vfrac.cohort import read_manifest
from vfrac.data.cache import CropSettings, cached_entry, read_entry
from vfrac.data.window import BONE_WINDOW
from vfrac.errors import InputError
from vfrac.run_tree import SLICE_PREDICTIONS
from vfrac.stats.metrics import aggregate

DEFAULT_METHODS = ("gradcam", "hirescam")
SANITY_IMAGES = 6
SANITY_DRAWS = 2  # random re-initialisations per stage, averaged
RENDER_WORKERS = 2  # processes reading CTs and writing overlays beside the maps' computation
SANITY_COLUMNS = ("method", "randomized_to", "spearman_mean", "spearman_sd", "images", "draws", "flagged")
FAITHFULNESS_COLUMNS = ("method", "maps", "deletion_auc", "insertion_auc", "slices")


@dataclass
class PatientReview:
    """What the page shows of one patient."""

    patient_id: str
    fold: int
    label: str
    probability: float
    call: str
    readers: dict
    slices: list = field(default_factory=list)  # dicts: slice, probability, images, attribution, attention

    @property
    def correct(self) -> bool:
        return self.call == self.label


@dataclass(frozen=True)
class FoldModel:
    """A finished fold as the review needs it: its model, settings and test patients' slice probabilities."""

    model: object  # keras.Model
    patients: dict  # patient_id -> [(slice, probability)]
    window: tuple[float, float]
    threshold: float
    aggregation: str
    input_size: int
    cache_dir: Path
    crop_settings: object  # vfrac.data.cache.CropSettings


@dataclass
class ExplainedSlices:
    """One patient's explained slices: the cached crops and where they lie, and the call each map explains."""

    review: PatientReview
    chosen: list  # [(slice, probability)], most probable first
    boxes: np.ndarray  # the crops' ROI squares (y0, x0, size) on their slices
    context: float  # the cache's context around each square
    cache_size: int
    crops: np.ndarray  # (n, C, C, 3) int16 HU
    classes: np.ndarray  # the class each slice's map explains: the model's call
    bone: np.ndarray | None = None  # (n, S, S) bone-window view of the network input, for the overlays


def review(run_id: str, tracking_uri: str, methods=DEFAULT_METHODS, layer: str | None = None, top: int = 3,
           out: Path = Path("."), dicom: bool = False, log: bool = True) -> Path:
    """Explain a CV run's fold models on their test patients; returns the page's path."""

    # TensorFlow loads here, not when the module is imported: main() sets its process defaults first.
    from explain.cam import Explainer, slice_shares  # TensorFlow loads here, only to explain
    from explain.sanity import RANDOMIZATION_SEEDS, randomized_maps, sanity_check  # TensorFlow (see above)

    if top < 1:
        raise InputError(f"--top-slices must be >= 1, received {top}")
    started = time.perf_counter()
    client = MlflowClient(tracking_uri=tracking_uri)
    run = cv_run(client, run_id)
    params = run.data.params
    layer = layer or params.get("cam_layer", DEFAULT_LAYER)
    folds = finished_folds(client, run)
    if not folds:
        raise InputError(f"run {run_id} has no finished fold to explain yet")
    cohort = run_cohort(params)
    out = Path(out)
    rows, sanity_rows, faithfulness_rows, reviews = [], [], [], []
    explained, seconds = 0, 0.0  # slices mapped, and the time their maps took (all methods together)
    explainer = None  # one, and one traced pass, for every fold model and random draw
    jobs = []  # (a patient's review, its overlays being drawn in a worker), in the page's order
    with tempfile.TemporaryDirectory() as scratch, renderer(RENDER_WORKERS) as pool:
        for fold, fold_run in sorted(folds.items()):
            fold_model = fold_model_of(client, fold_run, Path(scratch) / f"fold{fold}", params)
            print(f"explain fold {fold}: {len(fold_model.patients)} test patients, methods {', '.join(methods)}",
                  flush=True)
            explainer = explainer.load(fold_model.model) if explainer else Explainer(fold_model.model, layer)
            chosen = [_choose(cohort[pid], fold, slice_rows, fold_model, top)
                      for pid, slice_rows in fold_model.patients.items()]
            images = _network_inputs(chosen, fold_model)
            classes = np.concatenate([c.classes for c in chosen])
            timer = time.perf_counter()
            # one gradient pass serves the maps of the call, of the other class and the attribution
            maps, other, attribution = explainer.explain_both(images, classes, methods)
            seconds += time.perf_counter() - timer
            explained += len(images)
            offset = 0
            for item in chosen:
                part = slice(offset, offset + len(item.crops))
                offset = part.stop
                job = RenderJob(cohort[item.review.patient_id], fold, item.chosen, item.boxes, item.context,
                                item.cache_size, item.bone, item.classes, {m: maps[m][part] for m in methods},
                                {m: other[m][part] for m in methods}, [slice_shares(a) for a in attribution[part]],
                                fold_model.input_size, out, dicom)
                jobs.append((item.review, pool.submit(render, job)))
            if not sanity_rows:
                print(f"explain fold {fold}: randomisation sanity check and faithfulness", flush=True)
                sample = slice(0, SANITY_IMAGES)
                trained = {m: maps[m][sample] for m in methods}
                randomized = randomized_maps(explainer, fold_model.model, images[sample], classes[sample], methods,
                                             RANDOMIZATION_SEEDS[:SANITY_DRAWS])
                sanity_rows = sanity_check(trained, randomized)
                faithfulness_rows = _faithfulness(fold_model.model, trained, randomized, images[sample],
                                                  classes[sample])
        for review_of_patient, drawing in jobs:
            patient_rows, shown = drawing.result()
            rows += patient_rows
            review_of_patient.slices.extend(shown)
            reviews.append(review_of_patient)
    outcomes = {r.patient_id: (r.label, "correct" if r.correct else "incorrect") for r in reviews}
    summary = summarize(rows, outcomes)
    explain_dir = out / "explain"
    _write_csv(explain_dir / "attention.csv", rows, COLUMNS)
    _write_csv(explain_dir / "attention_summary.csv", summary, SUMMARY_COLUMNS)
    _write_csv(explain_dir / "sanity.csv", sanity_rows, SANITY_COLUMNS)
    _write_csv(explain_dir / "faithfulness.csv", faithfulness_rows, FAITHFULNESS_COLUMNS)
    speed = {" + ".join(methods): explained / seconds} if seconds > 0 else {}
    (explain_dir / "summary.md").write_text(_summary_markdown(summary, sanity_rows, faithfulness_rows, speed, layer))
    page = write_page(out / "review" / "index.html", reviews, summary, sanity_rows, faithfulness_rows, methods,
                      layer, run_id, out)
    if log:
        client.log_artifacts(run_id, str(explain_dir), "explain")
        client.log_artifacts(run_id, str(out / "review"), "review")
    print(f"explanation: {len(reviews)} patients, {sum(len(r.slices) for r in reviews)} slices, "
          + ", ".join(f"{m} {s:.1f} slices/s" for m, s in speed.items())
          + f", {time.perf_counter() - started:.0f} s in all", flush=True)
    return page


def run_cohort(params: dict) -> dict:
    """patient_id -> Patient of the run's cohort manifest, read as the run read it."""
    manifest = Path(params["cohort"])
    if not manifest.is_file():
        raise InputError(f"{manifest}: the run's cohort manifest is not here; explanation needs the cohort")
    cohort = read_manifest(manifest, allow_outside=params.get("allow_outside") == "True",
                           skip_bad=params.get("skip_bad") == "True")
    return {p.patient_id: p for p in cohort.patients}


def fold_model_of(client, fold_run, folder: Path, params: dict) -> FoldModel:
    """The fold's model, window, threshold and test patients' slice probabilities."""
    from vfrac.model.network import load_classifier  # TensorFlow loads here, only to explain

    folder.mkdir(parents=True)
    run_id = fold_run.info.run_id
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "model")}
    # An MLflow model with its contract (experiments.model_package); runs of earlier versions saved the file alone.
    model_path = client.download_artifacts(run_id, "model/data/model.keras" if "MLmodel" in logged
                                           else "model/model.keras", str(folder))
    slices_path = client.download_artifacts(run_id, SLICE_PREDICTIONS, str(folder))
    patients: dict[str, list] = {}
    with open(slices_path, newline="") as handle:
        for row in csv.DictReader(handle):
            patients.setdefault(row["patient_id"], []).append((int(row["slice"]), float(row["probability"])))
    fold_params = fold_run.data.params
    return FoldModel(
        model=load_classifier(model_path), patients=patients,
        window=(float(fold_params["best_window_level"]), float(fold_params["best_window_width"])),
        threshold=float(params.get("threshold", 0.5)), aggregation=params.get("aggregation", "max"),
        input_size=int(params["input_size"]), cache_dir=Path(params.get("cache_dir", "data/cache")),
        # older runs logged only some crop settings: the defaults then, and before the slice rule, none
        crop_settings=CropSettings.from_values(params, defaults=CropSettings(min_area=0.0)))


def _choose(patient, fold, slice_rows, fold_model: FoldModel, top) -> ExplainedSlices:
    """The patient's `top` most probable slices (cached crops), with what rendering needs."""
    from explain.cam import called_classes  # TensorFlow (see above)

    pid, threshold = patient.patient_id, fold_model.threshold
    label = "malignant" if patient.is_malignant else "benign"
    _, _, (probability,) = aggregate([pid] * len(slice_rows), [p for _, p in slice_rows],
                                     [label] * len(slice_rows), fold_model.aggregation)
    review = PatientReview(pid, fold, label, float(probability),
                           "malignant" if probability >= threshold else "benign", dict(patient.readers))
    prepared = read_entry(cached_entry(patient, fold_model.crop_settings, fold_model.cache_dir))
    chosen = sorted(slice_rows, key=lambda r: -r[1])[:top]
    where = {int(z): i for i, z in enumerate(prepared.slices)}
    indices = [where[z] for z, _ in chosen]
    return ExplainedSlices(review=review, chosen=chosen, boxes=prepared.boxes[indices], context=prepared.context,
                           cache_size=prepared.crops.shape[1], crops=prepared.crops[indices],
                           classes=called_classes([p for _, p in chosen], threshold))


def _network_inputs(chosen: list[ExplainedSlices], fold_model: FoldModel) -> np.ndarray:
    """The fold's explained slices as network inputs; each item gets its bone-window view as `bone`.

    One input pipeline for the whole fold (every entry has the run's crop settings):
    building it per patient cost more than the maps of a fold.
    """
    from explain.cam import windowed_rgb  # TensorFlow (see above)
    from vfrac.model.predictor import Predictor  # TensorFlow (see above)

    predictor = Predictor.single(fold_model.model, fold_model.input_size, fold_model.window)
    crops, crop_context = np.concatenate([item.crops for item in chosen]), fold_model.crop_settings.context
    bone = windowed_rgb(predictor.inputs(crops, crop_context, window=BONE_WINDOW))[..., 1]
    offsets = np.cumsum([0] + [len(item.crops) for item in chosen])
    for k, item in enumerate(chosen):
        item.bone = bone[offsets[k]:offsets[k + 1]]
    return predictor.inputs(crops, crop_context)


def _faithfulness(model, trained: dict, randomized: dict, images, classes) -> list[dict]:
    """Deletion and insertion areas on the trained `model` of each method's trained maps, of the fully
    randomised network's (every draw), and of a random order (a flat map); rows of FAITHFULNESS_COLUMNS."""
    from explain.sanity import CASCADE  # TensorFlow (see above)

    def predict(batch):
        return model.predict(batch, verbose=0)[:, 0]

    rows = []
    for method, maps in trained.items():
        for kind, draws in (("trained", [maps]), ("randomised", randomized[(method, CASCADE[-1])])):
            found = [faithfulness(predict, images, drawn, classes) for drawn in draws]
            rows.append({"method": method, "maps": kind, "slices": len(images)}
                        | {k: float(np.mean([f[k] for f in found])) for k in ("deletion_auc", "insertion_auc")})
    flat = faithfulness(predict, images, np.zeros(images.shape[:3], np.float32), classes)
    return rows + [{"method": "none", "maps": "random order"} | flat]


def _write_csv(path: Path, rows: list[dict], columns) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})


def _summary_markdown(summary: list[dict], sanity_rows: list[dict], faithfulness_rows: list[dict], speed: dict,
                      layer: str) -> str:
    lines = [f"# Where the model looked (layer {layer})", "",
             "Means over explained slices on which the feature is present. Ratio > 1: attention concentrates "
             "on the feature; pointing: the map's maximum lies on it.", "",
             "| method | feature | true class | call | slices | energy in mask | mask area | ratio | pointing |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary:
        lines.append(f"| {r['method']} | {r['feature']} | {r['true_class']} | {r['call']} | {r['slices']} | "
                     f"{r['energy_fraction']:.2f} | {r['area_fraction']:.2f} | {r['ratio']:.2f} | "
                     f"{r['pointing_hit_rate']:.2f} |")
    if not summary:
        lines.append("| (no slice with both a feature mask and a map to measure) | | | | | | | | |")
    lines += ["", "## Sanity check: maps of randomised networks (Adebayo et al., 2018)", "",
              "Spearman rank correlation with the trained network's maps, randomising from the top down; "
              "a method whose maps from the fully randomised network (conv1) still agree is flagged.", "",
              "| method | randomised down to | mean rho | SD | images | draws | flagged |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sanity_rows:
        lines.append(f"| {r['method']} | {r['randomized_to']} | {r['spearman_mean']:.2f} | {r['spearman_sd']:.2f} "
                     f"| {r['images']} | {r['draws']} | {'FLAGGED' if r['flagged'] else 'ok'} |")
    lines += ["", "## Faithfulness: deletion and insertion (Petsiuk et al., 2018)", "", FAITHFULNESS_NOTE, "",
              "| method | maps | deletion AUC | insertion AUC | slices |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['method']} | {r['maps']} | {r['deletion_auc']:.3f} | {r['insertion_auc']:.3f} | {r['slices']} |"
              for r in faithfulness_rows]
    lines += ["", "Speed: " + ", ".join(f"{m} {s:.1f} slices/s" for m, s in speed.items()), ""]
    return "\n".join(lines)
