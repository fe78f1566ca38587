"""A trained model as an MLflow model that carries its input contract, and its place in the registry.

Every model vfrac trains (each fold's and the final one) is logged as an MLflow Keras
model whose metadata (`vfrac` in MLmodel) holds everything `experiments.predict` needs
to turn a CT and an ROI into exactly the inputs the model was trained on: crop
settings and slice rule, HU window, input size, preprocessing, aggregation, threshold,
and where it came from (cohort hash, code version, CV run). Nothing of it lives only in
a README. The input example is an all-air crop, so no patient's pixels travel with a
shared model.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import ColSpec, DataType, Schema, TensorSpec

import vfrac
from experiments import pyfunc_model
from experiments.config import RunConfig
from experiments.tuning import TrialParams
from vfrac.data.cache import CropSettings
from vfrac.errors import InputError
from vfrac.run_tree import MODEL, PARENT_TAG, PRESET_TAG
from vfrac.stats.metrics import AGGREGATIONS

CONTRACT_VERSION = 1
# HU window to 0..255 per channel (slices z-1, z, z+1), then keras.applications.resnet50.preprocess_input.
PREPROCESSING = "hu-window-255-resnet50-caffe"
METADATA_KEY = "vfrac"


def contract(config: RunConfig, params: TrialParams, provenance: dict, expected: dict, epochs: int) -> dict:
    """What a model needs from its input, and what it was trained on and is expected to do."""
    return {
        "contract": CONTRACT_VERSION,
        "preprocessing": PREPROCESSING,
        "input_size": config.model.input_size,
        "channels": "slices z-1, z, z+1 of each ROI slice",
        "window": list(params.window),
        "crop": asdict(config.crops),
        "aggregation": config.protocol.aggregation,
        "threshold": config.protocol.threshold,
        "cam_layer": config.cam_layer,
        "precision": config.model.precision,
        "arch": config.model.arch,
        "epochs": epochs,
        "params": params.as_dict(),
        "expected": expected,  # patient_auc and what it was measured on
        **provenance,  # role, fold, cv_run_id, cohort_hash, code_version, git_commit, preset
    }


def provenance(tracker, run_id: str, role: str, **extra) -> dict:
    """Where a model came from: its role and the CV run's cohort hash, code version and commit."""
    run = tracker.client.get_run(run_id)
    cv_run_id = run.data.tags[PARENT_TAG]
    tags = tracker.client.get_run(cv_run_id).data.tags
    return {"role": role, **extra, "run_id": run_id, "cv_run_id": cv_run_id, "preset": tags.get(PRESET_TAG),
            **{name: tags.get(f"vfrac.{name}") for name in ("cohort_hash", "code_version", "git_commit")}}


def log_model(tracker, run_id: str, model, model_contract: dict) -> None:
    """The model with its signature, an all-air input example and its contract, under `model/` of the run."""

    size = model_contract["input_size"]
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, size, size, 3), "image")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1), "malignancy")]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / MODEL
        path.mkdir()  # the Keras flavour writes into an existing folder
        mlflow.keras.save_model(model, str(path), signature=signature, input_example=_air_input(model_contract),
                                metadata={METADATA_KEY: model_contract}, pip_requirements=_requirements())
        description = Model.load(str(path))
        description.flavors["python_function"]["loader_module"] = pyfunc_model.__name__
        description.save(str(path / "MLmodel"))
        tracker.artifacts(run_id, path, MODEL)


def _requirements() -> list[str]:
    """What loading the model needs, stated (MLflow's inference would load it without vfrac's layers and fail):
    vfrac itself, for the model's VariableDropout layer, and the Keras and TensorFlow it was saved with."""

    pinned = [f"vfrac=={vfrac.__version__}"]
    for package in ("keras", "tensorflow", "tensorflow-cpu", "tensorflow-macos"):
        try:
            pinned.append(f"{package}=={installed_version(package)}")
        except PackageNotFoundError:
            continue
    return pinned


def _air_input(model_contract: dict) -> np.ndarray:
    """One network input made from a crop of air: valid for the signature, no patient's pixels."""
    from vfrac.data.pipeline import AIR_HU, evaluation_images  # TensorFlow (tf.data) loads here, only to log a model

    crop = model_contract["crop"]
    air = np.full((1, crop["cache_size"], crop["cache_size"], 3), AIR_HU, np.int16)
    return evaluation_images(air, crop["context"], model_contract["input_size"], tuple(model_contract["window"]))


def log_cohort(client, run_id: str, manifest: Path, cohort_hash: str, context: str = "training") -> None:
    """The cohort as the run's dataset (`context`: training, or validation for another site's cohort): the UI's
    Dataset column, digest = the cohort hash."""

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": all of them a local file
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(manifest))
    schema = Schema([ColSpec(DataType.string, "patient_id"), ColSpec(DataType.string, "label")])
    dataset = MetaDataset(source, name=f"{manifest.parent.name}/{manifest.name}",
                          digest=cohort_hash, schema=schema)
    client.log_inputs(run_id, datasets=[DatasetInput(Dataset(**dataset.to_dict()),
                                                     tags=[InputTag("mlflow.data.context", context)])])


def register(client, name: str, run_id: str, description: str) -> str:
    """The registry version of this run's model, created (with `description`) unless it exists; its number."""

    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        if version.name == name:
            return version.version
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL}"
    return client.create_model_version(name, source, run_id=run_id, description=description).version


def check_contract(metadata: dict | None, input_shape, where: str) -> dict:
    """The model's contract, refused unless this code can reproduce its input exactly."""

    found = (metadata or {}).get(METADATA_KEY)
    if not isinstance(found, dict):
        raise InputError(f"{where}: no vfrac input contract in the model's metadata; only models logged by "
                         "experiments.cv (a fold's or the --final model) can be used")
    missing = [k for k in ("contract", "preprocessing", "input_size", "window", "crop", "aggregation", "threshold")
               if k not in found]
    if missing:
        raise InputError(f"{where}: the model's contract lacks {', '.join(missing)}")
    if found["contract"] != CONTRACT_VERSION or found["preprocessing"] != PREPROCESSING:
        raise InputError(f"{where}: contract {found['contract']} with preprocessing {found['preprocessing']!r}; "
                         f"this vfrac reproduces contract {CONTRACT_VERSION} ({PREPROCESSING}) only")
    size = found["input_size"]
    if tuple(input_shape[1:]) != (size, size, 3):
        raise InputError(f"{where}: the contract says input {size} x {size} x 3 but the network takes "
                         f"{' x '.join(map(str, input_shape[1:]))}")
    if found["aggregation"] not in AGGREGATIONS or not 0 < float(found["threshold"]) < 1:
        raise InputError(f"{where}: aggregation {found['aggregation']!r} or threshold {found['threshold']!r} "
                         "is not one this vfrac applies")
    expected = set(asdict(CropSettings()))
    if not isinstance(found["crop"], dict) or set(found["crop"]) != expected:
        raise InputError(f"{where}: the contract's crop settings are not reproducible: they must name exactly "
                         f"{', '.join(sorted(expected))}")
    try:
        CropSettings.from_values(found["crop"])
    except (TypeError, ValueError) as error:
        raise InputError(f"{where}: the contract's crop settings are not reproducible: {error}") from error
    window = found["window"]
    if not (isinstance(window, list) and len(window) == 2 and float(window[1]) > 0):
        raise InputError(f"{where}: the contract's HU window {window!r} is not a level and a positive width")
    return found
