"""The two stores a CV run lives in, the Optuna storage and the MLflow tracking store, as servers fail.

Opening either waits a bounded time (a wrong address or password is an `error:` at
start, not a hang). Once open, a call that finds its server gone (a restart, a
failover, a network cut) is retried with backoff for `patience` seconds, with one note
on the console; past that the run stops with StoreUnavailable, naming the store, and a
rerun of the same command continues it. A password in a store's URL is masked wherever
vfrac shows or logs the URL; credentials can also come from the environment or
~/.pgpass (libpq reads PGPASSWORD and PGPASSFILE) and, for an MLflow server, from
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from urllib.parse import unquote, urlsplit

import optuna
import requests
import sqlalchemy.exc
from mlflow.exceptions import RestException

from experiments.config import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_STORE_TIMEOUT
from experiments.locks import database_lock
from explain.runs import MASK, masked
from vfrac.errors import InputError

CONNECT_SECONDS = 10  # a database that does not answer a connection within this is unreachable
TRANSIENT_HTTP = {500, 502, 503, 504}


class StoreUnavailable(Exception):
    """A store stopped answering for longer than the patience: the work so far is kept, a rerun continues."""

    def __init__(self, store: str, message: str):
        super().__init__(message)
        self.store = store


def lost(error: BaseException, store: str) -> bool:
    """Whether `error` says that `store` is gone, so there is no use telling it about the failure."""
    return isinstance(error, StoreUnavailable) and error.store == store


def scrubbed(text: str, *urls: str) -> str:
    """`text` with the password of each URL masked, however a driver quoted it."""
    for url in urls:
        password = urlsplit(url).password if "://" in url else None
        if password:
            for form in {password, unquote(password)}:
                text = text.replace(form, MASK)
    return text


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def connection_lost(error: BaseException) -> bool:
    """Whether the error (or one it arose from) says the server is unreachable, not that the call was wrong."""

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, StoreUnavailable):  # retried already, for as long as allowed
            return False
        seen.add(id(error))
        if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return True
        if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                              requests.exceptions.RetryError)):  # RetryError: the server kept answering 5xx
            return True
        if isinstance(error, requests.exceptions.HTTPError) and error.response is not None \
                and error.response.status_code in TRANSIENT_HTTP:
            return True
        if isinstance(error, RestException) and error.get_http_status_code() in TRANSIENT_HTTP:
            return True  # the server answered that it cannot now (its database is down, say)
        error = error.__cause__ or error.__context__
    return False


def retried(call, *args, store: str, patience: float, **kwargs):
    """call(*args, **kwargs), retried with backoff while `store` is unreachable, for up to `patience` seconds."""
    started, delay, noted = time.monotonic(), 0.5, False
    while True:
        try:
            result = call(*args, **kwargs)
        except Exception as error:
            if not connection_lost(error):
                raise
            waited = time.monotonic() - started
            if waited + delay > patience:
                raise StoreUnavailable(store, f"{store} stopped answering ({waited:.0f} s of retries): "
                                       f"{scrubbed(first_line(error), store)}") from error
            if not noted:
                print(f"note: {store} is not answering ({scrubbed(first_line(error), store)}); "
                      f"retrying for up to {patience:.0f} s", file=sys.stderr, flush=True)
                noted = True
            time.sleep(delay)
            delay = min(2 * delay, 15.0)
            continue
        if noted:
            print(f"note: {store} answers again after {time.monotonic() - started:.0f} s", file=sys.stderr,
                  flush=True)
        return result


class Retrying:
    """Another object's methods, each retried while its store is unreachable (an MlflowClient, say)."""

    def __init__(self, target, store: str, patience: float):
        self.target, self.store, self.patience = target, store, patience

    def __getattr__(self, name):
        value = getattr(self.target, name)
        if not callable(value):
            return value
        return functools.partial(retried, value, store=self.store, patience=self.patience)


class RetryingStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, each of its calls retried while the database is unreachable.

    Optuna puts a cache in front of an RDB storage that calls some private methods too
    (`PRIVATE_CALLS`); those are retried as well. Heartbeats are not: a missed beat is
    sent again at the next interval.
    """

    def __init__(self, url: str, store: str, patience: float, **options):
        self.store, self.patience = store, patience
        super().__init__(url, **options)

    def retried(self, call, *args, **kwargs):
        return retried(call, *args, store=self.store, patience=self.patience, **kwargs)


PRIVATE_CALLS = ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id", "_get_stale_trial_ids")


def _retrying(name: str):
    @functools.wraps(getattr(optuna.storages.RDBStorage, name))
    def method(self, *args, **kwargs):
        return self.retried(getattr(optuna.storages.RDBStorage, name), self, *args, **kwargs)

    return method


for _name in [n for n in vars(optuna.storages.BaseStorage) if not n.startswith("_")] + list(PRIVATE_CALLS):
    setattr(RetryingStorage, _name, _retrying(_name))


def engine_options(url: str) -> dict:
    """A connection timeout for PostgreSQL, and connections checked before use (a restarted server cut them)."""
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_SECONDS}}
    return {}


def open_storage(url: str, heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
                 patience: float = DEFAULT_STORE_TIMEOUT) -> RetryingStorage:
    """The Optuna storage at `url`, with heartbeats every quarter of `heartbeat_timeout`, or a clear error."""
    store = f"the Optuna storage {masked(url)}"
    try:
        with database_lock(url, engine_options(url)), warnings.catch_warnings():  # processes starting together
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # create the tables once
            return RetryingStorage(url, store, patience, engine_kwargs=engine_options(url),
                                   heartbeat_interval=max(1, int(heartbeat_timeout // 4)),
                                   grace_period=int(heartbeat_timeout))
    except Exception as error:  # SQLAlchemy and drivers raise many types
        raise InputError(f"cannot open {store}: {scrubbed(first_line(error), url)}") from error
