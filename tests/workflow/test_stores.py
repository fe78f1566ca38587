"""Store URLs shown without their password, and calls retried only while a store is unreachable (no servers)."""

import inspect
import re

import optuna
import pytest
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException, RestException

from experiments import runner, stores
from experiments.stores import StoreUnavailable, connection_lost, retried, scrubbed
from explain.runs import masked

URL = "postgresql://vfrac:s%40cret-pw@db.example.org:5432/optuna"


def test_a_password_is_masked_in_urls_and_in_error_text():
    assert masked(URL) == "postgresql://vfrac:***@db.example.org:5432/optuna"
    assert masked("postgresql://vfrac@db/optuna") == "postgresql://vfrac@db/optuna"  # from ~/.pgpass: nothing to mask
    assert masked("http://user:pw@mlflow:5000") == "http://user:***@mlflow:5000"
    assert masked("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"
    text = f"could not connect to {URL} with password s@cret-pw"
    assert "cret" not in scrubbed(text, URL) and scrubbed(text, URL).count("***") == 2


def lost_connection() -> Exception:
    return sqlalchemy.exc.OperationalError("select 1", {}, Exception("server closed the connection unexpectedly"))


def test_only_errors_of_an_unreachable_server_count_as_a_lost_store():
    assert connection_lost(lost_connection())
    try:
        try:
            raise requests.exceptions.ConnectionError("Connection refused")
        except requests.exceptions.ConnectionError as error:
            raise MlflowException("API request to http://mlflow:5000 failed") from error
    except MlflowException as wrapped:
        assert connection_lost(wrapped)  # MLflow's REST client wraps the refusal
    try:
        try:
            raise requests.exceptions.RetryError("too many 503 error responses")  # a server shutting down
        except requests.exceptions.RetryError as error:
            raise MlflowException("API request to http://mlflow:5000 failed") from error
    except MlflowException as wrapped:
        assert connection_lost(wrapped)
    assert connection_lost(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "database down"}))
    assert connection_lost(RestException({"error_code": "INTERNAL_ERROR", "message": "connection reset"}))
    assert not connection_lost(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run 'x'"}))
    assert not connection_lost(MlflowException("raised here, not by a server"))
    assert not connection_lost(sqlalchemy.exc.IntegrityError("insert", {}, Exception("duplicate key")))
    assert not connection_lost(ValueError("a bug"))
    assert not connection_lost(StoreUnavailable("s", "retried already"))


def test_a_lost_store_is_retried_with_backoff_then_given_up_naming_it(monkeypatch, capsys):
    sleeps = []
    monkeypatch.setattr(stores.time, "sleep", sleeps.append)
    outcomes = iter([lost_connection(), lost_connection(), "answer"])

    def flaky():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retried(flaky, store="the Optuna storage X", patience=60) == "answer"
    assert sleeps == [0.5, 1.0]
    notes = capsys.readouterr().err
    assert "note: the Optuna storage X is not answering" in notes and "answers again" in notes

    def down():
        raise lost_connection()

    with pytest.raises(StoreUnavailable, match="the Optuna storage X stopped answering") as given_up:
        retried(down, store="the Optuna storage X", patience=0.1)
    assert given_up.value.store == "the Optuna storage X"
    with pytest.raises(ValueError):  # a bug is not retried
        retried(lambda: int("x"), store="S", patience=60)


def test_the_command_stops_with_exit_code_75_when_a_store_is_lost(monkeypatch, capsys):
    def lose(config, tracker, storage):
        raise StoreUnavailable("the MLflow tracking store http://m", "the MLflow tracking store http://m stopped "
                                                                     "answering (120 s of retries): refused")

    monkeypatch.setattr(runner, "cross_validation", lose)
    assert runner.run(None, None, None) == runner.TEMPORARY_FAILURE == 75
    error = capsys.readouterr().err
    assert error.startswith("error: the MLflow tracking store http://m stopped answering") and "run the same" in error


def test_every_call_optunas_cache_makes_on_the_database_is_retried(tmp_path, monkeypatch, capsys):
    """Optuna's cache in front of an RDB storage calls private methods too: a restart during one is retried."""
    cache_source = inspect.getsource(optuna.storages._cached_storage)
    called = set(re.findall(r"_backend\.(\w+)\(", cache_source)) - {"record_heartbeat", "get_heartbeat_interval",
                                                                      "get_heartbeat_stale_trial_callback"}
    assert called and all(name in vars(stores.RetryingStorage) for name in called), called
    monkeypatch.setattr(stores.time, "sleep", lambda seconds: None)
    read_trials, failures = optuna.storages.RDBStorage._get_trials, iter([lost_connection()])

    def fails_once(*args, **kwargs):
        failure = next(failures, None)
        if failure:
            raise failure
        return read_trials(*args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_trials", fails_once)
    storage = stores.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="restart", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert next(failures, None) is None and "is not answering" in capsys.readouterr().err
