"""Reading a CV run back from the MLflow store: what a CV run and a finished fold look like.

The review (explain/) and the report (experiments/) both read finished runs;
`experiments.tracking` writes them. This module lives here because explain/ may not
import experiments/, while experiments/ may import explain/.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from vfrac.errors import InputError
from vfrac.run_tree import CV_ROLE, DONE_TAG, FOLD_ROLE, FOLD_TAG, PARENT_TAG, ROLE_TAG

DEFAULT_STORE = Path("mlruns")
MASK = "***"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the sqlite store in mlruns/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.resolve() / 'mlflow.db'}"


def default_storage() -> str:
    """The Optuna storage a run uses without --storage: $VFRAC_STORAGE, or the SQLite file in mlruns/."""
    return os.environ.get("VFRAC_STORAGE") or f"sqlite:///{DEFAULT_STORE.resolve() / 'optuna.db'}"


def masked(url: str) -> str:
    """The store's URL with its password, if any, replaced by ***: how vfrac shows and logs it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return url
    return url.replace(f":{password}@", f":{MASK}@", 1) if password else url


def cv_run(client, run_id: str):
    """The run with this id, refused clearly when it is unknown or not a vfrac CV run."""

    try:
        run = client.get_run(run_id)
    except Exception as error:  # MLflow raises several types for unknown ids and stores
        raise InputError(f"no MLflow run {run_id!r} in {masked(client.tracking_uri)}: {error}") from error
    if run.data.tags.get(ROLE_TAG) != CV_ROLE:
        raise InputError(f"run {run_id} is not a vfrac CV run (tag {ROLE_TAG} is "
                         f"{run.data.tags.get(ROLE_TAG)!r}); pass the CV run's id")
    return run


def finished_folds(client, run) -> dict:
    """fold number -> fold run, for the CV run's folds whose work is done."""
    children = client.search_runs([run.info.experiment_id],
                                  f"tags.`{PARENT_TAG}` = '{run.info.run_id}' and tags.`{ROLE_TAG}` = '{FOLD_ROLE}'",
                                  max_results=1000)
    return {int(r.data.tags[FOLD_TAG]): r for r in children if r.data.tags.get(DONE_TAG) == "1"}
