"""A reader study made from a finished CV run: cases, decoys, orders and every image, in one transaction.

Each case is a test patient of the run, read with the model of the fold that held it
out. The map shown explains the model's call; beside it is the other class's map. On
decoy cases both are replaced by the maps of the same network with every weight
re-initialised (the last stage of `explain.sanity`'s cascade), blinded among the real
ones: if readers rate decoys as highly as real maps, the maps tell them nothing.
"""

from __future__ import annotations

import csv
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from sqlalchemy import insert, update

from explain.methods import DEFAULT_LAYER
from explain.reader_study import schema
from explain.reader_study.design import decoy_cases, new_token, reading_orders, stratified_sample, token_digest
from explain.reader_study.material import CaseImages, case_images
from explain.run_review import DEFAULT_METHODS, fold_model_of, run_cohort
from explain.runs import cv_run, finished_folds
from vfrac.cohort import LABELS  # by class index: 1 is malignant
from vfrac.data.cache import cached_entry, read_entry
from vfrac.data.crops import input_to_slice
from vfrac.errors import InputError
from vfrac.io.volume import load_mask, load_volume
from vfrac.run_tree import COHORT_HASH_TAG, PATIENT_PREDICTIONS


@dataclass(frozen=True)
class Candidate:
    """A test patient of the run, as the pooled patient predictions give it."""

    patient_id: str
    fold: int
    label: str
    probability: float
    call: str

    @property
    def stratum(self) -> str:
        return f"{self.label}, model {'right' if self.call == self.label else 'wrong'}"


@dataclass(frozen=True)
class Created:
    study_id: int
    tokens: list  # reader number - 1 -> the reader's private token (shown once; the database keeps digests)
    cases: int
    decoys: int
    reader_calls: dict  # patient_id -> the cohort's reader columns (what --simulate answers from)


def create_study(engine, run_id: str, tracking_uri: str, readers: int, cases: int | None = None,
                 decoy_share: float = 0.2, seed: int = 0, method: str | None = None, name: str | None = None,
                 progress=print) -> Created:
    """Draw the study's cases from CV run `run_id`, compute their images and store it all; returns the tokens."""
    if readers < 1:
        raise InputError(f"--readers must be >= 1, received {readers}")
    if cases is not None and cases < 1:
        raise InputError(f"--cases must be >= 1, received {cases}")
    if not 0.0 <= decoy_share < 1.0:
        raise InputError(f"--decoy-share must be in [0, 1), received {decoy_share}")
    client = MlflowClient(tracking_uri=tracking_uri)
    run = cv_run(client, run_id)
    params = run.data.params
    method = method or DEFAULT_METHODS[0]
    layer = params.get("cam_layer", DEFAULT_LAYER)
    threshold = float(params.get("threshold", 0.5))
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as scratch:
        everyone = candidates(client, run_id, Path(scratch))
        try:
            chosen = [everyone[i] for i in stratified_sample([c.stratum for c in everyone], cases, rng)]
        except ValueError as error:
            raise InputError(str(error)) from error
        decoys = decoy_cases([c.stratum for c in chosen], decoy_share, rng)
        orders = reading_orders(len(chosen), readers, rng)
        cohort = run_cohort(params)
        features = sorted({name for p in cohort.values() for name in p.masks} | {
            name for p in cohort.values() for name in p.features})
        progress(f"reader study: {len(chosen)} cases ({sum(decoys)} with decoy maps), {readers} readers, "
                 f"{method} maps at layer {layer}", flush=True)
        shown = _images(client, run, params, cohort, chosen, decoys, method, layer, Path(scratch), progress)
    tokens = [new_token() for _ in range(readers)]
    with engine.begin() as db:  # all or nothing: a failed creation leaves no half study
        study_id = db.execute(insert(schema.studies).values(
            name=name or f"reader study of {run.info.run_name}", cv_run_id=run_id,
            cohort_hash=run.data.tags.get(COHORT_HASH_TAG, ""), method=method, layer=layer,
            threshold=threshold, seed=seed, decoy_share=decoy_share, features=",".join(features),
            simulated=False)).inserted_primary_key[0]
        case_ids = [_store_case(db, study_id, c, d, images) for c, d, images in zip(chosen, decoys, shown, strict=True)]
        for number, (token, order) in enumerate(zip(tokens, orders, strict=True), start=1):
            reader_id = db.execute(insert(schema.readers).values(
                study_id=study_id, number=number, token_digest=token_digest(token))).inserted_primary_key[0]
            db.execute(insert(schema.worklists), [{"reader_id": reader_id, "position": position,
                                                   "case_id": case_ids[k]} for position, k in enumerate(order)])
    return Created(int(study_id), tokens, len(chosen), sum(decoys),
                   {c.patient_id: dict(cohort[c.patient_id].readers) for c in chosen})


def candidates(client, run_id: str, scratch: Path) -> list[Candidate]:
    """Every test patient of the run, with its label and call, from its pooled patient predictions (written when
    the run finishes, the call at the run's threshold)."""
    try:
        path = client.download_artifacts(run_id, PATIENT_PREDICTIONS, str(scratch))
    except Exception as error:  # MLflow raises several types for a missing artifact
        raise InputError(f"run {run_id} has no {PATIENT_PREDICTIONS}: a reader study needs a finished CV run "
                         f"({error})") from error
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [Candidate(r["patient_id"], int(r["fold"]), LABELS[int(r["label"])], float(r["probability"]),
                      LABELS[int(r["prediction"])]) for r in rows]


def _images(client, run, params, cohort, chosen, decoys, method, layer, scratch: Path, progress) -> list[CaseImages]:
    """Each chosen case's images, fold by fold (one model loaded at a time)."""
    from explain.cam import Explainer  # TensorFlow loads here, only to draw the maps
    from explain.sanity import RANDOMIZATION_SEEDS, randomized_cascade  # TensorFlow (see above)
    from vfrac.model.predictor import Predictor  # TensorFlow (see above)

    folds = finished_folds(client, run)
    shown: list = [None] * len(chosen)
    explainer = None
    for fold in sorted({c.fold for c in chosen}):
        if fold not in folds:
            raise InputError(f"fold {fold} of run {run.info.run_id} is not finished")
        fold_model = fold_model_of(client, folds[fold], scratch / f"fold{fold}", params)
        explainer = explainer.load(fold_model.model) if explainer else Explainer(fold_model.model, layer)
        predictor = Predictor.single(fold_model.model, fold_model.input_size, fold_model.window)
        members = [k for k, c in enumerate(chosen) if c.fold == fold]
        progress(f"reader study: fold {fold}, {len(members)} cases", flush=True)
        inputs = {k: read_entry(cached_entry(cohort[chosen[k].patient_id], fold_model.crop_settings,
                                             fold_model.cache_dir)) for k in members}
        images = {k: predictor.inputs(inputs[k].crops, inputs[k].context) for k in members}
        maps = {k: _both_maps(explainer, images[k], chosen[k].call, method) for k in members}
        if any(decoys[k] for k in members):  # the fully randomised network draws the decoys' maps
            # the explainer shares its layers with the model it was built on: its weights are put back after
            trained = fold_model.model.get_weights()
            _, random_model = list(randomized_cascade(fold_model.model, RANDOMIZATION_SEEDS[0]))[-1]
            explainer.load(random_model)
            maps |= {k: _both_maps(explainer, images[k], chosen[k].call, method) for k in members if decoys[k]}
            fold_model.model.set_weights(trained)
            explainer.load(fold_model.model)
        for k in members:
            prepared, patient = inputs[k], cohort[chosen[k].patient_id]
            volume = load_volume(patient.ct)
            order = cranial_first(prepared.slices, volume.affine)
            transforms = [input_to_slice(box, prepared.context, prepared.crops.shape[1], fold_model.input_size)
                          for box in prepared.boxes[order]]
            shown[k] = case_images(volume.hu, _lesion(patient, volume), prepared.slices[order], transforms,
                                   fold_model.input_size, *(m[order] for m in maps[k]))
    return shown


def cranial_first(slices, affine) -> np.ndarray:
    """The order that shows the slices from head to feet, as a PACS viewer scrolls: z rises toward the head
    where the affine's z axis has a positive superior (LPS S) component."""
    ascending = np.argsort(slices, kind="stable")
    return ascending[::-1] if affine[2, 0] > 0 else ascending


def _both_maps(explainer, images, call: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(maps of the called class, maps of the other class) of a case's slices."""
    called = np.full(len(images), int(call == "malignant"), dtype=np.int32)
    maps, other, _ = explainer.explain_both(images, called, (method,), attribution=False)
    return maps[method], other[method]


def _lesion(patient, volume) -> np.ndarray | None:
    """The union of the patient's feature masks (where the lesion's signs are), or None without masks."""
    if not patient.masks:
        return None
    union = np.zeros(volume.shape, dtype=bool)
    for path in patient.masks.values():
        union |= load_mask(path, volume) != 0
    return union


def _store_case(db, study_id: int, candidate: Candidate, decoy: bool, shown: CaseImages) -> int:
    case_id = db.execute(insert(schema.cases).values(
        study_id=study_id, code=secrets.token_hex(4), patient_id=candidate.patient_id, fold=candidate.fold,
        label=candidate.label, probability=candidate.probability, call=candidate.call, decoy=decoy,
        stratum=candidate.stratum, slices=len(shown.slices), display_size=shown.display_size,
        lesion_slices=shown.lesion_slices, map_energy_ratio=shown.map_energy_ratio,
        map_pointing_hit=shown.map_pointing_hit)).inserted_primary_key[0]
    db.execute(insert(schema.images), [{"case_id": case_id, "slice_index": k, "z": shown.slices[k], "kind": kind,
                                        "png": data} for (k, kind), data in shown.pngs.items()])
    return case_id


def reissue_token(engine, study_id: int, number: int) -> str:
    """A new private token for reader `number` of the study; their earlier link stops opening."""
    token = new_token()
    with engine.begin() as db:
        changed = db.execute(update(schema.readers).where(
            (schema.readers.c.study_id == study_id) & (schema.readers.c.number == number)).values(
            token_digest=token_digest(token))).rowcount
    if changed != 1:
        raise InputError(f"study {study_id} has no reader {number}")
    return token
