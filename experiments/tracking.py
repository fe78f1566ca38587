"""The MLflow run tree (docs/architecture.md): a CV run, its fold runs, their trial runs.

Parents are set explicitly (`mlflow.parentRunId`) through the client, never through
the fluent API's active-run stack, so several processes can add folds and trials to
one CV run. Every call is retried while the store is unreachable (experiments.stores);
tag values are strings, as MLflow's REST API requires. Only what vfrac computed is
logged: the config, metrics, and files it wrote from the manifest's pseudonymous ids;
nothing read from DICOM headers.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import optuna
from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus
from mlflow.exceptions import MlflowException

from experiments.config import DEFAULT_STORE_TIMEOUT, RunConfig
from experiments.locks import database_lock
from experiments.stores import (
    Retrying,
    RetryingStorage,
    engine_options,
    first_line,
    lost,
    masked,
    open_storage,
    scrubbed,
)
from vfrac.errors import InputError
from vfrac.run_tree import CV_ROLE, DONE_TAG, FAILURE_TAG, PARENT_TAG, ROLE_TAG, RUN_KEY_TAG

# MLflow 3 records an experiment's kind in this tag; ours train models.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow 3.17's UI picks its GenAI or model-training view from this query (else the browser's last
# choice, GenAI at first), not from the tag: the links vfrac prints carry it.
TRAINING_VIEW = "workflowType=machine_learning"
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default (its --host and --port)
MLFLOW_SETTINGS = {  # MLflow's client reads these from the environment (a user's own values stand)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",  # the Tracker retries (experiments.stores); its first call fails fast
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # vfrac prints the links that matter
}


def open_stores(config: RunConfig) -> tuple[Tracker, RetryingStorage]:
    """The run's MLflow tracking store and Optuna storage, opened before the command loads TensorFlow: a wrong
    address or password is an InputError within seconds. Their INFO lines (tables created, studies made) are kept
    off the console."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stores = config.stores
    tracker = Tracker(stores.tracking_uri, stores.experiment, patience=stores.store_timeout)
    return tracker, open_storage(stores.storage, stores.heartbeat_timeout, patience=stores.store_timeout)


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, patience: float = DEFAULT_STORE_TIMEOUT):
        """Open the store at once (an unreachable one is an InputError), then retry its calls for `patience` s."""
        for name, value in MLFLOW_SETTINGS.items():
            os.environ.setdefault(name, value)
        self.uri = tracking_uri
        self.store = store = f"the MLflow tracking store {masked(tracking_uri)}"
        try:
            with database_lock(tracking_uri, engine_options(tracking_uri)):  # processes starting together
                self.client = MlflowClient(tracking_uri=tracking_uri)      # create the tables once
                self.experiment_id = self._experiment(experiment)
        except Exception as error:  # MLflow raises many types for unreachable stores
            raise InputError(f"cannot reach {store}: {scrubbed(first_line(error), tracking_uri)}") from error
        self.client = Retrying(self.client, store, patience)

    def _experiment(self, name: str) -> str:
        """The experiment's id, created if needed, tagged as model training for MLflow 3."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        artifacts = None
        if self.uri.startswith("sqlite:///"):  # keep artifacts beside the database
            artifacts = (Path(self.uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifacts,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as error:  # another worker made it since (a tracking server has no lock here)
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return self._experiment(name)

    # -- the tree -------------------------------------------------------------------
    def find_cv_run(self, key: str) -> str | None:
        """The CV run with this key, if one was made (experiments.runner makes it under a claim)."""
        found = self._find(f"tags.`vfrac.run_key` = '{key}' and tags.`{ROLE_TAG}` = 'cv'")
        return found[0].info.run_id if found else None

    def create_cv_run(self, key: str, tags: dict, name: str) -> str:
        return self.client.create_run(self.experiment_id, run_name=name,
                                      tags=_strings({ROLE_TAG: CV_ROLE, RUN_KEY_TAG: key, **tags})).info.run_id

    def child_run(self, parent_id: str, role: str, tags: dict, name: str) -> str:
        """The child of `parent_id` with this role and tags, found or created."""
        query = " and ".join([f"tags.`{PARENT_TAG}` = '{parent_id}'", f"tags.`{ROLE_TAG}` = '{role}'"]
                             + [f"tags.`{k}` = '{v}'" for k, v in tags.items()])
        existing = self._find(query)
        if existing:
            return existing[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags=_strings({PARENT_TAG: parent_id, ROLE_TAG: role, **tags}))
        return run.info.run_id

    def children(self, parent_id: str, role: str):
        return self._find(f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{ROLE_TAG}` = '{role}'")

    def is_done(self, run_id: str) -> bool:
        run = self.client.get_run(run_id)
        return run.info.status == "FINISHED" and run.data.tags.get(DONE_TAG) == "1"

    def finish(self, run_id: str, done: bool = True, status: str = "FINISHED") -> None:
        if done:
            self.client.set_tag(run_id, DONE_TAG, "1")
        self.client.set_terminated(run_id, status=status)

    def fail(self, run_id: str, error: BaseException | str, status: str | None = None) -> None:
        """End a run that did not finish: KILLED when interrupted, else FAILED; the reason as a tag.

        Not when the failure is this store's loss: the run stays RUNNING, and a rerun takes it up.
        """
        if lost(error, self.store):
            return
        interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
        reason = "interrupted" if interrupted else str(error) or type(error).__name__
        self.client.set_tag(run_id, FAILURE_TAG, reason[:5000])
        self.client.set_terminated(run_id, status=status or ("KILLED" if interrupted else "FAILED"))

    def cv_runs_of_other_code(self, settings_key: str, run_key: str):
        """CV runs of the same settings and cohort that other code computed."""
        return [r for r in self._find(f"tags.`vfrac.settings_key` = '{settings_key}' and tags.`{ROLE_TAG}` = 'cv'")
                if r.data.tags.get(RUN_KEY_TAG) != run_key]

    def schedule(self, run_id: str) -> None:
        """Mark a run made ahead of its work as waiting (MLflow creates every run RUNNING)."""
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.SCHEDULED))

    def restart(self, run_id: str) -> None:
        """Mark a resumed run as running again (MLflow has no other 'resume' for clients)."""
        if FAILURE_TAG in self.client.get_run(run_id).data.tags:  # the reason it stopped before no longer holds
            self.client.delete_tag(run_id, FAILURE_TAG)
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    # -- logging --------------------------------------------------------------------
    def params(self, run_id: str, params: dict) -> None:
        """Log the params the run lacks: MLflow's are write-once, so a resumed run keeps its own, and of two
        processes logging at once (fold workers on one CV run) the first wins."""
        logged = self.client.get_run(run_id).data.params
        missing = [Param(name, str(value)[:6000]) for name, value in params.items() if name not in logged]
        for start in range(0, len(missing), 100):  # MLflow takes at most 100 params a batch
            batch = missing[start:start + 100]
            while batch:
                try:
                    self.client.log_batch(run_id, params=batch)
                    break
                except MlflowException:  # another process logged some of them first: log the rest
                    logged = self.client.get_run(run_id).data.params
                    if all(p.key not in logged for p in batch):
                        raise
                    batch = [p for p in batch if p.key not in logged]

    def metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        for name, value in metrics.items():
            if value is not None and value == value:  # skip NaN
                self.client.log_metric(run_id, name, float(value), step=step)

    def set_tag(self, run_id: str, name: str, value) -> None:
        self.client.set_tag(run_id, name, str(value))

    def tag(self, run_id: str, name: str) -> str | None:
        return self.client.get_run(run_id).data.tags.get(name)

    def artifacts(self, run_id: str, local: Path, path: str | None = None) -> None:
        if Path(local).is_dir():
            self.client.log_artifacts(run_id, str(local), path)
        else:
            self.client.log_artifact(run_id, str(local), path)

    def read_text(self, run_id: str, path: str) -> str:
        with tempfile.TemporaryDirectory() as folder:
            return self.download(run_id, path, Path(folder)).read_text()

    def has_artifact(self, run_id: str, path: str) -> bool:
        folder, _, name = path.rpartition("/")
        return any(Path(a.path).name == name for a in self.client.list_artifacts(run_id, folder or None))

    def download(self, run_id: str, path: str, destination: Path) -> Path:
        destination.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(destination)))

    def browse_lines(self, run_id: str) -> list[str]:
        """How to look at a run: the UI to start on a local store, then the run's own page (the line a user clicks)."""
        if self.uri.startswith(("http://", "https://")):
            address, start = self.uri.rstrip("/"), []
        else:
            address, start = UI_ADDRESS, [f"to browse the runs: mlflow ui --backend-store-uri {masked(self.uri)}"]
        return start + [f"this run: {address}/#/experiments/{self.experiment_id}/runs/{run_id}?{TRAINING_VIEW}"]

    def _find(self, query: str):
        return self.client.search_runs([self.experiment_id], query, order_by=["attributes.start_time ASC"],
                                       max_results=1000)


def _strings(tags: dict) -> dict[str, str]:
    return {name: str(value) for name, value in tags.items()}
