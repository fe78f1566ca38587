"""Loading vfrac models from MLflow: one fold's, the registered final model, or a CV run's fold models as
an ensemble, as experiments.model_flags chose them (experiments.predict, experiments.validate).

Models load with their contract (experiments.model_package) checked; `predictor_of` makes them one
`vfrac.model.predictor.Predictor`.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from experiments.model_package import check_contract
from experiments.results import read_rows
from explain.methods import DEFAULT_LAYER
from explain.runs import cv_run, finished_folds, masked
from vfrac.errors import InputError
from vfrac.run_tree import CODE_VERSION_TAG, COHORT_HASH_TAG, MODEL, PATIENT_PREDICTIONS

# What every fold model of an ensemble must share: the same crops, inputs, patient rule and call.
SHARED_BY_MEMBERS = ("crop", "input_size", "aggregation", "threshold", "cam_layer", "preprocessing")
REGISTERED = re.compile(r"models:/([^/@]+)/(\d+)")


def load_members(args, tracking_uri: str, folder: Path) -> tuple[list[tuple], dict]:
    """[(keras model, contract)] (one, or each fold model of --ensemble) and what prediction.json says of them."""
    keys = ("role", "fold", "run_id", "cv_run_id", "cohort_hash", "code_version", "expected")
    if args.model:
        model, model_contract, label = load_model(args.model, tracking_uri, folder)
        return [(model, model_contract)], {"uri": args.model, "label": label,
                                           **{k: model_contract.get(k) for k in keys}}


    client = MlflowClient(tracking_uri=tracking_uri)
    run = cv_run(client, args.ensemble)
    folds, planned = finished_folds(client, run), int(run.data.params.get("folds", 0))
    if len(folds) < max(planned, 2):
        raise InputError(f"CV run {args.ensemble} has {len(folds)} of its {planned} fold models finished; an ensemble "
                         "needs every fold's (finish the CV run first, or use one fold's model with --model)")
    members, uris = [], []
    for fold, fold_run in sorted(folds.items()):
        uris.append(f"runs:/{fold_run.info.run_id}/{MODEL}")
        model, model_contract, _ = load_model(uris[-1], tracking_uri, folder / f"fold{fold}")
        members.append((model, model_contract))
    first = members[0][1]
    for uri, (_, other) in zip(uris, members, strict=True):
        differing = [k for k in SHARED_BY_MEMBERS if other.get(k) != first.get(k)]
        if differing:
            raise InputError(f"{uri}: its {', '.join(differing)} differ from fold {sorted(folds)[0]}'s; the fold "
                             "models of one CV run must share them to form an ensemble")
    metrics = run.data.metrics
    expected = {"patient_auc": metrics.get("patient_auc"),
                "patient_auc_ci": [metrics.get("patient_auc_ci_low"), metrics.get("patient_auc_ci_high")],
                "measured_on": "pooled out-of-fold predictions of the same CV run"}
    return members, {"uri": f"ensemble:{args.ensemble}", "label": f"ensemble of {len(members)} fold models",
                     "role": "ensemble", "members": uris, "cv_run_id": args.ensemble,
                     "cohort_hash": run.data.tags.get(COHORT_HASH_TAG),
                     "code_version": run.data.tags.get(CODE_VERSION_TAG), "expected": expected}


def cv_patients(tracking_uri: str, cv_run_id: str | None) -> list[dict] | None:
    """The CV run's pooled out-of-fold patient rows, None where the run is not in this store."""


    if not cv_run_id:
        return None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            path = MlflowClient(tracking_uri=tracking_uri).download_artifacts(cv_run_id, PATIENT_PREDICTIONS,
                                                                               scratch)
            return read_rows(Path(path))
    except (MlflowException, OSError):
        return None


def load_model(uri: str, tracking_uri: str, folder: Path):
    """(keras model, its checked contract, how to name it) from an MLflow model URI."""

    from vfrac.model.network import load_classifier  # TensorFlow loads here, not for --help

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    except (MlflowException, OSError) as error:
        raise InputError(f"{uri}: no such model in {masked(tracking_uri)}: {str(error).splitlines()[0]}") from error
    if not (local / "MLmodel").is_file() or not (local / "data" / "model.keras").is_file():
        raise InputError(f"{uri}: not an MLflow Keras model logged by vfrac (no MLmodel and data/model.keras)")
    model = load_classifier(local / "data" / "model.keras")
    model_contract = check_contract(Model.load(str(local)).metadata, model.input_shape, uri)
    layer = model_contract.get("cam_layer", DEFAULT_LAYER)
    if layer not in {each.name for each in model.layers}:
        raise InputError(f"{uri}: the contract's Grad-CAM layer {layer!r} is not in the network")
    return model, model_contract, label_of(uri)


def label_of(uri: str) -> str:
    """`vfrac-resnet50 v1` for a registered version; the URI otherwise."""
    match = REGISTERED.fullmatch(uri)
    return f"{match[1]} v{match[2]}" if match else uri


def predictor_of(members: list[tuple]):
    """The loaded [(keras model, contract)] as one Predictor under the first's rule (members share it)."""
    from vfrac.model.predictor import Member, Predictor  # TensorFlow (see above)

    first = members[0][1]
    return Predictor([Member(model, int(contract["input_size"]), tuple(contract["window"]))
                      for model, contract in members], first["aggregation"], float(first["threshold"]))
