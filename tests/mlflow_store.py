"""Reading a test's MLflow store: its runs by role, and a CSV artifact's rows."""

import csv
from pathlib import Path

from mlflow import MlflowClient


def runs(store: Path | str, experiment: str = "vfrac"):
    """(client, {role: runs}) of a test's sqlite store folder, or of an experiment on a tracking server's URL."""
    uri = store if str(store).startswith("http") else f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment)
    everything = client.search_runs([experiment.experiment_id], max_results=1000)
    by_role = {role: [r for r in everything if r.data.tags.get("vfrac.role") == role]
               for role in ("cv", "fold", "trial")}
    return client, by_role


def artifact_rows(client, run_id, path, folder):
    with open(client.download_artifacts(run_id, path, str(folder))) as handle:
        return list(csv.DictReader(handle))
