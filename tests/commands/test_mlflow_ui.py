"""The lines a run prints open MLflow's own UI on that run, in its model-training view, in headless Chromium.

MLflow 3.17's UI chooses between its GenAI view (an overview of traces and tokens) and its model-training
view (the runs table) from the link's query, not from the experiment's tag; so the printed link must say it.
"""

import contextlib
import html
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from experiments.tracking import TRAINING_VIEW, UI_ADDRESS, Tracker

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")

RUN_NAME, METRIC, VALUE = "cv demo 5e1f2a", "roc_auc", 0.8765


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A CV-like run in a sqlite store, the lines vfrac prints for it, and `mlflow ui` started as printed."""
    folder = tmp_path_factory.mktemp("ui")
    tracker = Tracker(f"sqlite:///{folder}/mlflow.db", "vfrac")
    run = tracker.create_cv_run("key", {}, name=RUN_NAME)
    tracker.metrics(run, {METRIC: VALUE})
    tracker.finish(run)
    command, link = tracker.browse_lines(run)
    mlflow_ui = shlex.split(command.removeprefix("to browse the runs: "))
    assert mlflow_ui[:2] == ["mlflow", "ui"], command
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", *mlflow_ui, "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),  # no job workers
                              start_new_session=True)  # its own process group: the server and its workers end together
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.skip("the MLflow server did not start")
                time.sleep(0.5)
        yield tracker, run, link, base
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone when it failed to start
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def rendered(url: str, profile) -> tuple[str, str]:
    """The page's title and visible text once Chromium has run its scripts (a fresh profile: no remembered view)."""
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                          "--virtual-time-budget=15000", "--dump-dom", url],
                         check=True, capture_output=True, text=True, timeout=90).stdout
    title = html.unescape(re.search(r"<title>(.*?)</title>", dom, re.S).group(1))
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return title, html.unescape(re.sub(r"<[^>]+>", " ", text))


def served(link: str, base: str) -> str:
    """The printed link, on the port this test's server listens on instead of `mlflow ui`'s default."""
    printed = f"this run: {UI_ADDRESS}/#/"
    assert link.startswith(printed), link
    return f"{base}/#/" + link.removeprefix(printed)


def test_the_printed_link_opens_the_run_with_its_name_and_metric(ui, tmp_path):
    tracker, run, link, base = ui
    title, text = rendered(served(link, base), tmp_path / "profile")
    assert run in title and RUN_NAME in text, (title, text[:2000])
    assert METRIC in text and str(VALUE) in text, text[:2000]


def test_its_experiment_opens_on_the_runs_table_not_the_genai_overview(ui, tmp_path):
    """The printed link's experiment page, with its query; the GenAI view shows the markers tell the views apart."""
    tracker, run, link, base = ui
    experiment = served(link, base).replace(f"/runs/{run}", "")
    assert experiment.startswith(f"{base}/#/experiments/{tracker.experiment_id}?"), experiment
    title, text = rendered(experiment, tmp_path / "training")
    assert title.startswith("Runs") and RUN_NAME in text, (title, text[:2000])  # the runs table lists the run
    genai, text = rendered(experiment.replace(TRAINING_VIEW, "workflowType=genai"), tmp_path / "genai")
    assert genai.startswith("Overview") and RUN_NAME not in text, (genai, text[:2000])
