"""The MLflow run tree on a temporary sqlite store, in process, and reading it back (explain.runs)."""

import pytest
from mlflow import MlflowClient

from experiments.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker
from explain.runs import cv_run, finished_folds
from vfrac.errors import InputError
from vfrac.run_tree import FAILURE_TAG


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db", "vfrac")


def test_the_experiment_opens_on_the_runs_table_even_when_it_existed_untagged(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("older")
    for name in ("vfrac", "older"):
        experiment = client.get_experiment(Tracker(uri, name).experiment_id)
        assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_an_experiment_another_worker_creates_first_is_used_not_an_error(tmp_path, monkeypatch):
    """Workers starting together on a tracking server (no lock there) both find no experiment; the second to
    create it gets RESOURCE_ALREADY_EXISTS and takes the first one's."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(uri, "vfrac").experiment_id
    lookup, calls = MlflowClient.get_experiment_by_name, []

    def not_yet_the_first_time(self, name):
        calls.append(name)
        return None if len(calls) == 1 else lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_yet_the_first_time)
    assert Tracker(uri, "vfrac").experiment_id == first and len(calls) == 2


def test_a_cv_run_is_found_again_by_its_key_and_its_children_by_role_and_tags(tracker):
    assert tracker.find_cv_run("key1") is None
    first = tracker.create_cv_run("key1", {"vfrac.cohort_hash": "abc", "vfrac.folds": 2}, name="cv demo")
    assert tracker.find_cv_run("key1") == first and tracker.find_cv_run("key2") is None
    assert tracker.client.get_run(first).data.tags["vfrac.folds"] == "2"  # a string, as MLflow's REST API needs
    fold0 = tracker.child_run(first, "fold", {"vfrac.fold": 0}, name="fold 0")
    assert tracker.child_run(first, "fold", {"vfrac.fold": 0}, name="fold 0") == fold0
    fold1 = tracker.child_run(first, "fold", {"vfrac.fold": 1}, name="fold 1")
    assert {r.info.run_id for r in tracker.children(first, "fold")} == {fold0, fold1}
    tracker.finish(fold0)
    tracker.schedule(fold1)
    client = tracker.client
    assert sorted(finished_folds(client, cv_run(client, first))) == [0]
    assert tracker.is_done(fold0) and not tracker.is_done(fold1)
    with pytest.raises(InputError, match="is not a vfrac CV run"):
        cv_run(client, fold0)
    with pytest.raises(InputError, match="no MLflow run 'nope'"):
        cv_run(client, "nope")


def test_params_are_write_once_nan_metrics_are_skipped_and_failures_say_why(tracker):
    run = tracker.create_cv_run("key", {}, name="cv")
    tracker.params(run, {"epochs": 10})
    tracker.params(run, {"epochs": 12, "folds": 2})  # a resumed run keeps what it logged
    tracker.metrics(run, {"auc": 0.9, "nan": float("nan"), "none": None})
    data = tracker.client.get_run(run).data
    assert data.params == {"epochs": "10", "folds": "2"} and data.metrics == {"auc": 0.9}
    tracker.fail(run, ValueError("the ROI is empty"))
    failed = tracker.client.get_run(run)
    assert failed.info.status == "FAILED" and failed.data.tags[FAILURE_TAG] == "the ROI is empty"
    tracker.restart(run)  # the reason it stopped no longer holds
    restarted = tracker.client.get_run(run)
    assert restarted.info.status == "RUNNING" and FAILURE_TAG not in restarted.data.tags
    tracker.fail(run, KeyboardInterrupt())
    assert tracker.client.get_run(run).info.status == "KILLED" and tracker.tag(run, FAILURE_TAG) == "interrupted"


def test_of_two_processes_logging_a_param_at_once_the_first_value_stands(tracker, monkeypatch):
    run = tracker.create_cv_run("key", {}, name="cv")
    before = tracker.client.get_run(run)  # what the second process read, before the first logged
    tracker.params(run, {"fold": 1, "folds": 2})
    reads = iter([before])
    real = tracker.client.get_run
    monkeypatch.setattr(tracker, "client", type("Late", (), {
        "get_run": lambda self, run_id: next(reads, None) or real(run_id),
        "log_batch": tracker.client.log_batch})())
    tracker.params(run, {"fold": 0, "folds": 2, "seed": 3})  # MLflow refuses the batch for 'fold'; 'seed' is new
    assert real(run).data.params == {"fold": "1", "folds": "2", "seed": "3"}


def test_the_browse_lines_give_the_ui_command_and_then_the_runs_own_page_in_the_training_view(tracker, tmp_path):
    run = tracker.create_cv_run("key", {}, name="cv")
    page = f"#/experiments/{tracker.experiment_id}/runs/{run}?workflowType=machine_learning"
    command = f"to browse the runs: mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db"
    assert tracker.browse_lines(run) == [command, f"this run: http://127.0.0.1:5000/{page}"]
    tracker.uri = "https://mlflow.example.org/"  # a tracking server serves its own UI
    assert tracker.browse_lines(run) == [f"this run: https://mlflow.example.org/{page}"]
