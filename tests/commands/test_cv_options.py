"""experiments.cv in process on a tiny cohort of its own: options that change what a run does, bad
input, failed starts and interruptions (a module apart from test_cv, so the two share the test workers)."""

import json
from pathlib import Path

import pytest

from experiments.cv import main
from tests.mlflow_store import artifact_rows, runs
from vfrac.synth import generate_cohort

pytestmark = [pytest.mark.slow]
TINY = ["--folds", "2", "--epochs", "1", "--input-size", "32", "--arch", "resnet-tiny"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("options") / "cohort", 12, seed=5, matrix=96)


def test_inner_k_fold_and_hyperband_tune_a_fold(cohort, tmp_path, monkeypatch):
    """--inner-folds 2 trains a trial twice (one validation curve per inner fold); --pruner hyperband runs."""
    manifest = cohort
    monkeypatch.chdir(tmp_path)
    assert main(["--cohort", str(manifest), *TINY, "--trials", "1", "--fold", "0", "--inner-folds", "2",
                 "--pruner", "hyperband", "--no-explain", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                 "--storage", f"sqlite:///{tmp_path}/optuna.db"]) == 0
    client, by_role = runs(tmp_path)
    (cv_run,) = by_role["cv"]
    assert (cv_run.data.params["inner_folds"], cv_run.data.params["pruner"]) == ("2", "hyperband")
    trials = [t for t in by_role["trial"] if t.info.status == "FINISHED"]
    assert len(trials) == len(by_role["trial"]) == 1
    for trial in trials:  # TINY trains 1 epoch: one value per inner fold
        assert len(client.get_metric_history(trial.info.run_id, "inner_val_slice_auc")) == 2
    done = {r.data.tags["vfrac.fold"]: r.data.tags.get("vfrac.done") for r in by_role["fold"]}
    assert done == {"0": "1", "1": None}  # --fold 0: the other fold waits


def test_skip_bad_leaves_out_bad_rows_and_patients_and_says_which(cohort, tmp_path, capsys, monkeypatch):
    manifest = cohort
    (manifest.parent / "empty").mkdir(exist_ok=True)
    lines = manifest.read_text().splitlines()
    broken = lines[1].split(",")
    broken[2] = "empty"  # VF0001's CT: a folder without any file
    bad = manifest.with_name("skip.csv")
    bad.write_text("\n".join([lines[0], ",".join(broken), *lines[2:], "VF0099,benign"]) + "\n")
    monkeypatch.chdir(tmp_path)
    argv = ["--cohort", str(bad), *TINY, "--trials", "0", "--fold", "0", "--no-explain",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    assert main(argv) == 2  # without --skip-bad the first bad row stops the run
    capsys.readouterr()
    assert main([*argv, "--skip-bad"]) == 0
    output = capsys.readouterr().out
    assert "--skip-bad: left out 3 patient(s) or manifest row(s):" in output  # VF0099's row: ct and roi empty
    assert "VF0001: " in output and "no CT image" in output
    client, by_role = runs(tmp_path)
    (cv_run,) = [r for r in by_role["cv"] if r.info.status != "FAILED"]
    excluded = artifact_rows(client, cv_run.info.run_id, "excluded.csv", tmp_path / "a")
    assert [r["patient_id"] for r in excluded] == ["", "", "VF0001"] and excluded[2]["label"] == broken[1]
    assert "row 13 (patient_id VF0099), column ct: is empty" in excluded[0]["reason"]
    assert "no CT image among 0 file(s)" in excluded[2]["reason"]
    splits = json.loads(Path(client.download_artifacts(cv_run.info.run_id, "splits.json", str(tmp_path / "b")))
                        .read_text())
    assert "VF0001" not in json.dumps(splits) and "VF0002" in json.dumps(splits)


def test_bad_manifest_rows_stop_the_run(cohort, tmp_path, capsys, monkeypatch):
    manifest = cohort
    bad = manifest.with_name("bad.csv")
    lines = manifest.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace(",benign,", ",fracture,").replace(",malignant,", ",fracture,"),
                              *lines[2:]]) + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--cohort", str(bad), *TINY, "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                 "--storage", f"sqlite:///{tmp_path}/o.db"]) == 2
    assert "row 1 (patient_id VF0001), column label: 'fracture' is not one of benign, malignant" in \
        capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--cohort", "/nonexistent/manifest.csv"], "manifest not found"),
    (["--folds", "9"], "fewer than the 9 folds"),
    (["--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow tracking store"),
    (["--storage", "sqlite:////nonexistent-folder/optuna.db"], "cannot open the Optuna storage"),
])
def test_bad_input_gives_a_clear_error_and_exit_code(cohort, tmp_path, capsys, monkeypatch, extra, message):
    manifest = cohort
    monkeypatch.chdir(tmp_path)
    argv = ["--cohort", str(manifest), *TINY, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage", f"sqlite:///{tmp_path}/optuna.db", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_failed_start_leaves_no_run_running_and_a_rerun_by_other_code_says_so(cohort, tmp_path, capsys,
                                                                              monkeypatch):
    from experiments import runner

    manifest = cohort
    monkeypatch.chdir(tmp_path)
    argv = ["--cohort", str(manifest), *TINY, "--folds", "9", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    assert main(argv) == 2
    client, by_role = runs(tmp_path)
    (failed,) = by_role["cv"]
    assert failed.info.status == "FAILED" and "fewer than the 9 folds" in failed.data.tags["vfrac.failure"]
    assert failed.data.tags["vfrac.code_version"].startswith("0.1.0")
    capsys.readouterr()
    monkeypatch.setattr(runner, "code_version", lambda: "0.1.0+gother")
    assert main(argv) == 2
    output = capsys.readouterr().out
    assert f"note: CV run {failed.info.run_id} has these settings and this cohort but ran other code" in output
    assert len(runs(tmp_path)[1]["cv"]) == 2


def test_an_interrupted_run_leaves_its_runs_killed_or_scheduled_never_running(cohort, tmp_path, monkeypatch):
    from experiments import protocol

    manifest = cohort
    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what SIGTERM and Ctrl-C raise

    monkeypatch.setattr(protocol, "tune", interrupted)
    assert main(["--cohort", str(manifest), *TINY, "--trials", "2", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                 "--storage", f"sqlite:///{tmp_path}/optuna.db"]) == 130
    _, by_role = runs(tmp_path)
    statuses = {r.info.run_name: (r.info.status, r.data.tags.get("vfrac.failure"))
                for r in by_role["cv"] + by_role["fold"]}
    assert statuses == {by_role["cv"][0].info.run_name: ("KILLED", "interrupted"),
                        "fold 0": ("KILLED", "interrupted"), "fold 1": ("SCHEDULED", None)}
