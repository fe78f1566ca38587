"""The reader study on a real CV run: `create` from the shared tiny run, readers reading in headless Chromium
(Debian's chromium and chromium-driver, driven by Selenium), the server killed and restarted, a second reader,
tampered requests, and a simulated study analysed into the run and its report."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from sqlalchemy import select

from explain.reader_study import schema
from explain.reader_study.__main__ import main as reader_study
from tests.servers import free_port
from tests.shared_run import uninterrupted_run

REPO = Path(__file__).resolve().parents[2]
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A copy of the shared tiny run (its MLflow store re-pointed at the copy's artifacts), so what the study
    logs does not change the run other test files read."""
    shared, outcome = uninterrupted_run(tmp_path_factory)
    assert outcome.code == 0, outcome.output
    copy = tmp_path_factory.mktemp("reader-study") / "store"
    shutil.copytree(shared, copy, ignore=shutil.ignore_patterns("*.lock"))
    with sqlite3.connect(copy / "mlflow.db") as db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            db.execute(f"update {table} set {column} = replace({column}, ?, ?)", (str(shared), str(copy)))
    return copy


def cv_run_id(store: Path) -> str:
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    (run,) = client.search_runs(["1"], "tags.`vfrac.role` = 'cv'")
    return run.info.run_id


def create(store: Path, database: str, capsys, monkeypatch, *extra) -> tuple[int, list[str]]:
    monkeypatch.chdir(store)  # the run's crop cache is data/cache, relative to where it ran
    code = reader_study(["create", "--run", cv_run_id(store), "--tracking-uri", f"sqlite:///{store}/mlflow.db",
                         "--database", database, *extra])
    output = capsys.readouterr().out
    assert code == 0, output
    study = int(output.split("study ", 1)[1].split(":", 1)[0])
    return study, [line.rsplit("/r/", 1)[1] for line in output.splitlines() if "/r/" in line]


def start_server(database: str, study: int, port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "explain.reader_study", "serve", "--study", str(study),
                                "--database", database, "--port", str(port)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/r/none", timeout=2)
        except urllib.error.HTTPError:
            return process  # answering: 403 for a link that opens nothing
        except OSError:
            assert process.poll() is None, process.communicate()[0]
            time.sleep(0.2)
    raise TimeoutError("the reading app did not start")


def post(url: str, form: dict) -> int:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def answers(database: str) -> list:
    engine = schema.open_database(database)
    with engine.connect() as db:
        rows = db.execute(select(schema.answers, schema.readers.c.number).join(
            schema.readers, schema.readers.c.id == schema.answers.c.reader_id).order_by(schema.answers.c.id)).all()
    engine.dispose()
    return rows


@pytest.fixture
def browser():
    if shutil.which("chromium") is None or CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1250,900"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def read_one_case(driver, link: str, number: int, total: int) -> str:
    """Read the open case through both steps as a reader would; returns its patient id."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.wait import WebDriverWait

    def text(element_id):
        return driver.find_element(By.ID, element_id).text

    def submit():  # a click does not wait for the page it opens: wait until the old page is gone
        button = driver.find_element(By.ID, "submit")
        button.click()
        WebDriverWait(driver, 30).until(staleness_of(button))

    driver.get(link)
    assert driver.find_element(By.TAG_NAME, "h1").text == f"Case {number} of {total}"
    assert text("step") == "Step 1: your reading" and "probability" not in driver.page_source
    assert not driver.find_elements(By.ID, "heat")  # no map before the unaided answer
    patient = driver.find_element(By.CLASS_NAME, "bar").text.split("patient ")[1].split(" ")[0]
    ct = driver.find_element(By.ID, "ct")
    bone = ct.get_attribute("src")
    driver.find_element(By.ID, "window-soft").click()
    assert ct.get_attribute("src") != bone and driver.execute_script("return arguments[0].naturalWidth", ct) > 0
    driver.find_element(By.ID, "call-malignant").click()
    driver.find_element(By.ID, "confidence-4").click()
    submit()

    assert text("step") == "Step 2: with the model" and "probability of malignancy" in text("model")
    heat = driver.find_element(By.ID, "heat")
    called = heat.get_attribute("src")
    assert driver.execute_script("return arguments[0].naturalWidth", heat) > 0
    driver.find_element(By.ID, "layer-other").click()  # the other class's map beside the call's
    assert heat.get_attribute("src") != called
    driver.find_element(By.ID, "map-on").click()
    assert not heat.is_displayed()
    driver.find_element(By.ID, "call-benign").click()
    driver.find_element(By.ID, "confidence-2").click()
    driver.find_element(By.ID, "rating-2").click()
    ActionChains(driver).move_to_element_with_offset(driver.find_element(By.ID, "viewer"), 30, -40).click().perform()
    assert "marked on slice" in text("click-note")
    submit()
    return patient


def test_readers_read_in_chromium_resume_after_a_kill_and_see_only_their_worklist(store, tmp_path, browser, capsys,
                                                                                  monkeypatch):
    from selenium.webdriver.common.by import By

    database = f"sqlite:///{tmp_path}/studies.db"
    study, tokens = create(store, database, capsys, monkeypatch, "--readers", "2", "--cases", "6",
                           "--decoy-share", "0.34", "--seed", "3")
    assert len(tokens) == 2 and len(set(tokens)) == 2
    with sqlite3.connect(tmp_path / "studies.db") as db:
        cases = db.execute("select id, decoy, slices, label from cases where study_id = ?", (study,)).fetchall()
        kinds = db.execute("select kind, count(*) from images group by kind").fetchall()
        stored_digests = {d for (d,) in db.execute("select token_digest from readers")}
        lists = db.execute("select reader_id, case_id from worklists order by reader_id, position").fetchall()
    assert len(cases) == 6 and sum(d for _, d, _, _ in cases) == 2
    slices = sum(s for _, _, s, _ in cases)
    assert dict(kinds) == {kind: slices for kind in schema.IMAGE_KINDS}  # every slice in two windows, two maps, lesion
    assert not set(tokens) & stored_digests  # the database keeps digests only
    orders = {}
    for reader, case in lists:
        orders.setdefault(reader, []).append(case)
    assert [sorted(o) for o in orders.values()] == [sorted(c for c, *_ in cases)] * 2

    port = free_port()
    server = start_server(database, study, port)
    link = f"http://127.0.0.1:{port}/r/{tokens[0]}"
    try:
        read = [read_one_case(browser, link, k, 6) for k in (1, 2, 3)]
        server.send_signal(signal.SIGKILL)  # mid-study, no chance to clean up
        log = server.communicate(timeout=30)[0]
        assert "GET /r/*** HTTP" in log and tokens[0] not in log  # the request log hides the links
        given = answers(database)
        assert [(a.number, a.step, a.call, a.confidence) for a in given] == \
            [(1, "unaided", "malignant", 4), (1, "aided", "benign", 2)] * 3
        assert all(a.map_rating == "partly" and 0 <= a.click_x <= 1 for a in given if a.step == "aided")
        server = start_server(database, study, port)
        browser.get(link)
        assert browser.find_element(By.TAG_NAME, "h1").text == "Case 4 of 6"
        assert browser.find_element(By.ID, "step").text == "Step 1: your reading"
        assert browser.find_element(By.CLASS_NAME, "bar").text.split("patient ")[1].split(" ")[0] not in read

        browser.get(f"http://127.0.0.1:{port}/r/{tokens[1]}")  # the second reader starts at their own first case
        assert browser.find_element(By.TAG_NAME, "h1").text == "Case 1 of 6"
        assert "Your reading" not in browser.page_source and "probability" not in browser.page_source

        with sqlite3.connect(tmp_path / "studies.db") as db:
            (code_now,) = db.execute("select c.code from worklists w join cases c on c.id = w.case_id join readers r "
                                     "on r.id = w.reader_id where r.number = 1 and w.position = 3").fetchone()
            (code_done,) = db.execute("select c.code from worklists w join cases c on c.id = w.case_id join readers "
                                      "r on r.id = w.reader_id where r.number = 1 and w.position = 0").fetchone()
        base = f"http://127.0.0.1:{port}/r"
        unaided = {"call": "benign", "confidence": "3"}
        assert post(f"{base}/{tokens[0]}/case/{code_done}/unaided", unaided) == 409  # answered already
        assert post(f"{base}/{tokens[0]}/case/{code_now}/unaided", {"call": "benign", "confidence": "9"}) == 422
        assert post(f"{base}/{tokens[0]}/case/{code_now[::-1]}x/unaided", unaided) == 404  # a tampered case id
        assert post(f"{base}/{tokens[0][:-1]}X/case/{code_now}/unaided", unaided) == 403  # a wrong token
        aided = unaided | {"map_rating": "partly", "click_slice": "0", "click_x": "0.5", "click_y": "0.5"}
        assert post(f"{base}/{tokens[0]}/case/{code_now}/aided", aided) == 409  # aided before unaided
        assert len([a for a in answers(database) if a.number == 1]) == 6  # nothing written for reader 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def test_a_simulated_study_is_analysed_into_the_cv_run_and_its_report(store, tmp_path, capsys, monkeypatch):
    database = f"sqlite:///{tmp_path}/simulated.db"
    study, tokens = create(store, database, capsys, monkeypatch, "--readers", "3", "--simulate")
    assert tokens == []  # a simulated study has no links to hand out
    given = answers(database)
    assert len(given) == 3 * 12 * 2 and all(a.simulated for a in given)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the report is renewed by `python -m experiments.report`
    code = reader_study(["analyse", "--study", str(study), "--database", database,
                         "--tracking-uri", f"sqlite:///{store}/mlflow.db"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "SIMULATED" in output and "Obuchowski-Rockette" in output
    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    run_id = cv_run_id(store)
    local = Path(client.download_artifacts(run_id, "", str(tmp_path / "run")))
    found = json.loads((local / "reader_study" / f"study-{study}" / "analysis.json").read_text())
    assert found["simulated"] and found["readers"] == 3 and found["cases"] == 12 and found["readings"] == 36
    with open(local / "reader_study" / f"study-{study}" / "readings.csv", newline="") as handle:
        assert {row["simulated"] for row in csv.DictReader(handle)} == {"True"}
    assert {"analysis.md", "analysis.html", "readings.csv", "section.json"} <= {
        p.name for p in (local / "reader_study" / f"study-{study}").iterdir()}
    metrics = client.get_run(run_id).data.metrics
    assert not [name for name in metrics if name.startswith("reader_study")]  # a simulated study's are marked
    assert metrics[f"simulated_reader_study_{study}_accuracy_unaided"] == pytest.approx(
        next(r for r in found["calls"] if r["reader"] == "pooled")["accuracy_unaided"])
    report = (local / "report" / "report.md").read_text()
    assert f"## SIMULATED Reader study {study}" in report and "they say nothing about real readers" in report
    with sqlite3.connect(tmp_path / "simulated.db") as db:
        assert db.execute("select simulated from studies where id = ?", (study,)).fetchone() == (1,)
