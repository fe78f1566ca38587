"""vfrac on the servers a lab runs: a PostgreSQL Optuna storage and an MLflow tracking server, with faults.

The servers are tests/servers.py's (.ci/run starts them; the `servers` fixture skips
these tests without them). Every test that uses them is here, in one file, so none runs
while another restarts PostgreSQL or stops the MLflow server. The commands share one
crop cache of the tiny cohort.
"""

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench import bench_faults as faults
from experiments.claims import OWNER_ATTR, UNIT_ATTR, Claims, new_trial
from experiments.stores import StoreUnavailable, open_storage
from experiments.tuning import POSITION_ATTR, SEARCHED
from tests.mlflow_store import runs
from tests.shared_run import shared_root, tiny_cohort, uninterrupted_run

pytestmark = pytest.mark.servers


def fresh_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- the storage alone


def test_processes_opening_a_new_database_together_create_its_tables_once(servers, tmp_path):
    urls = [servers.new_database(fresh_name("race")), f"sqlite:///{tmp_path}/optuna.db"]
    start = time.time() + 6  # after every process has imported Optuna
    code = ("import sys, time; from experiments.stores import open_storage; import optuna\n"
            f"time.sleep(max(0, {start} - time.time()))\n"
            "for url in sys.argv[1:]:\n"
            "    optuna.create_study(study_name='s', storage=open_storage(url), load_if_exists=True)\n"
            "print('opened')")
    processes = [subprocess.Popen([sys.executable, "-c", code, *urls], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, env=faults.child_env()) for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert all(p.returncode == 0 and "opened" in out for p, out in zip(processes, outputs, strict=True)), outputs
    for url in urls:
        assert len(optuna.get_all_study_summaries(open_storage(url))) == 1


def test_a_claim_from_another_machine_is_free_once_its_heartbeat_is_stale(servers):
    storage = open_storage(servers.new_database(fresh_name("heartbeat")), heartbeat_timeout=4)
    ours = Claims(storage, "k")
    theirs, _ = new_trial(storage, ours.study, {UNIT_ATTR: "fold0"})
    storage.set_trial_user_attr(theirs, OWNER_ATTR, "another-host/1:4242:99")  # alive as far as we can see
    storage.record_heartbeat(theirs)
    with ours.hold("fold0") as mine:
        assert not mine  # its heartbeat is fresh
    time.sleep(5)
    with ours.hold("fold0") as mine:
        assert mine
    assert storage.get_trial(theirs).state == TrialState.FAIL


def test_the_storage_waits_out_a_postgres_restart_and_gives_up_after_its_timeout(servers, capsys):
    url = servers.new_database(fresh_name("restart"))
    storage = open_storage(url, patience=60)
    optuna.create_study(study_name="s", storage=storage)
    servers.stop_postgres()
    restart = threading.Timer(3, servers.start_postgres)
    restart.start()
    try:
        assert [s.study_name for s in storage.get_all_studies()] == ["s"]  # retried until PostgreSQL is back
    finally:
        restart.join()
    notes = capsys.readouterr().err
    assert "postgresql://vfrac:***@127.0.0.1" in notes and "is not answering" in notes and "answers again" in notes
    assert servers.password not in notes

    impatient = open_storage(url, patience=2)
    servers.stop_postgres()
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"the Optuna storage postgresql://vfrac:\*\*\*@") as lost:
            impatient.get_all_studies()
        assert time.monotonic() - started < 10
    finally:
        servers.start_postgres()
    assert servers.password not in str(lost.value)


# ---------------------------------------------------------------- the command at start


def test_a_wrong_password_or_an_unreachable_store_is_one_error_at_start_not_a_wait(servers, tmp_path):
    """At start a store that refuses or does not answer is the user's to fix: an error at once (a few seconds
    here), not the `--store-timeout` of retries that a store lost later in the run gets."""
    manifest = tiny_cohort_manifest(tmp_path)
    wrong = servers.postgres_url("mlflow", password="not-the-password")
    cases = {
        "wrong password": (["--storage", wrong, "--tracking-uri", servers.mlflow_url],
                           r"the Optuna storage postgresql://vfrac:\*\*\*@.*password authentication failed"),
        "unreachable database": (["--storage", f"postgresql://vfrac@127.0.0.1:{free_port()}/x", "--tracking-uri",
                                  servers.mlflow_url], r"cannot open the Optuna storage .*(refused|failed)"),
        "unreachable tracking server": (["--tracking-uri", f"http://127.0.0.1:{free_port()}", "--storage",
                                         servers.postgres_url("mlflow")], r"cannot reach the MLflow tracking store"),
    }
    patience = 600
    started = {name: faults.start_case(["experiments.cv", "--cohort", manifest, *faults.TINY, "--store-timeout",
                                        str(patience), *args], tmp_path, faults.CV_LIMIT)
               for name, (args, _) in cases.items()}
    for name, process in started.items():
        outcome = faults.finish(process, timeout=patience)
        assert outcome.code == 2 and outcome.seconds < patience / 5, (name, outcome)
        assert re.search(cases[name][1], outcome.error()), (name, outcome.output)
        assert "Traceback" not in outcome.output
        assert servers.password not in outcome.output and "not-the-password" not in outcome.output


def tiny_cohort_manifest(folder):
    from vfrac.synth import generate_cohort

    return generate_cohort(folder / "cohort", 4, seed=1, matrix=64)


def free_port() -> int:
    from tests.servers import free_port as port

    return port()


# ---------------------------------------------------------------- three workers and the job array on one run, faults


def shared_folder(tmp_path_factory) -> Path:
    """The working folder of every command here: one crop cache (data/cache/) of the tiny cohort for all."""
    folder = shared_root(tmp_path_factory) / "server-commands"
    folder.mkdir(exist_ok=True)
    return folder


def wait_for_running_trial(storage, suffix: str, processes, timeout: float = 600) -> optuna.trial.FrozenTrial:
    """A RUNNING trial, all its settings drawn, in the study whose name ends with `suffix`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in processes):
            raise RuntimeError("every worker ended:\n" + "\n".join(outcome_of(p).output for p in processes))
        for summary in optuna.get_all_study_summaries(storage):
            if summary.study_name.endswith(suffix):
                study = optuna.load_study(study_name=summary.study_name, storage=storage)
                for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    if len(trial.params) >= len(SEARCHED):
                        return trial
        time.sleep(0.5)
    raise TimeoutError(f"no running trial in {suffix}")


def completed_trials(storage) -> list[tuple[str, int]]:
    return [(s.study_name, t.number) for s in optuna.get_all_study_summaries(storage) if "-fold" in s.study_name
            for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,))]


def wait_for_new_complete_trial(storage, seen: set, processes, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in processes):
            raise RuntimeError("every worker ended:\n" + "\n".join(outcome_of(p).output for p in processes))
        if set(completed_trials(storage)) - seen:
            return
        time.sleep(0.2)
    raise TimeoutError("no trial completed")


def fold_studies(storage) -> dict[str, list[tuple]]:
    """(state, position) of every trial, by fold."""
    return {s.study_name.rsplit("-", 1)[1]: [(t.state.name, t.user_attrs.get(POSITION_ATTR))
                                             for t in optuna.load_study(study_name=s.study_name,
                                                                        storage=storage).trials]
            for s in optuna.get_all_study_summaries(storage) if "-fold" in s.study_name}


def assert_no_password_anywhere(servers, outputs, databases, experiment):
    client, by_role = runs(servers.mlflow_url, experiment)
    for run in sum(by_role.values(), []):
        assert servers.password not in str(run.data.params) + str(run.data.tags), run.info.run_id
    for output in outputs:
        assert servers.password not in output
    for database in databases:
        assert servers.password not in servers.dump(database), database
    stored = subprocess.run(["grep", "-rlF", "-e", servers.password, f"{servers.folder}/artifacts"],
                            capture_output=True, text=True)
    assert stored.stdout == "", stored.stdout


SCRIPTS = Path(__file__).resolve().parents[2] / "examples" / "slurm"


def array_task(script: str, env: dict, log: Path, folder: Path) -> subprocess.Popen:
    """One of examples/slurm/'s scripts, run as SLURM runs a job: bash, its environment, its output to a file."""
    process = subprocess.Popen(["bash", str(SCRIPTS / script)], cwd=folder, env=env, stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    process.log = log
    return process


def outcome_of(process) -> faults.Outcome:
    if hasattr(process, "log"):
        return faults.Outcome(process.wait(timeout=900), process.log.read_text(), float("nan"), 0.0)
    return faults.finish(process)


@pytest.mark.slow
@pytest.mark.e2e
def test_three_workers_two_of_them_array_tasks_share_one_run_through_a_kill_a_restart_and_an_outage(
        servers, tmp_path, tmp_path_factory):
    """Three processes start together on one CV run: a worker given the whole run (its storage URL with the
    password in it) and examples/slurm/cv-folds.sbatch's two array tasks (one fold each; the password in a
    PGPASSFILE, as ~/.pgpass). The one running a trial of fold 1 is killed (SIGKILL), PostgreSQL restarts, the
    MLflow server is down for 10 s; cv-pool.sbatch comes last. Every trial and fold once, nothing left running,
    no password anywhere, and the numbers of one uninterrupted process on SQLite files."""
    manifest, folder = tiny_cohort(tmp_path_factory), shared_folder(tmp_path_factory)
    database, experiment = fresh_name("three"), fresh_name("three")
    url = servers.new_database(database)
    # Retried for up to 10 min: the outage lasts 10 s plus the MLflow server's start, which a loaded machine slows.
    settings = [*faults.TINY, "--experiment", experiment, "--heartbeat-timeout", "8", "--store-timeout", "600",
                "--no-explain"]
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{servers.postgres_port}:{database}:vfrac:{servers.password}\n")
    passfile.chmod(0o600)
    env = faults.child_env({
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PGPASSFILE": str(passfile),
        "VFRAC_COHORT": str(manifest), "MLFLOW_TRACKING_URI": servers.mlflow_url, "VFRAC_CV_ARGS": " ".join(settings),
        "VFRAC_STORAGE": f"postgresql://vfrac@127.0.0.1:{servers.postgres_port}/{database}",  # no password
        "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_COUNT": "2"})
    workers = [faults.start_case(["experiments.cv", "--cohort", manifest, "--storage", url, "--tracking-uri",
                                  servers.mlflow_url, *settings], folder, faults.CV_LIMIT)]
    workers += [array_task("cv-folds.sbatch", env | {"SLURM_ARRAY_TASK_ID": str(fold)}, tmp_path / f"fold{fold}.log",
                           folder) for fold in (0, 1)]
    storage = open_storage(url)
    running = wait_for_running_trial(storage, "-fold1", workers)
    owner = int(running.user_attrs[OWNER_ATTR].split(":")[1])
    (killed,) = [w for w in workers if w.pid == owner]
    killed.kill()
    servers.restart_postgres()
    # The MLflow server goes down as a trial is told complete: its worker logs to MLflow next, within the outage.
    wait_for_new_complete_trial(storage, set(completed_trials(storage)), workers)
    servers.stop_mlflow()
    time.sleep(10)
    servers.start_mlflow()
    outcomes = {w.pid: outcome_of(w) for w in workers}
    survivors = [o for pid, o in outcomes.items() if pid != owner]
    assert outcomes[owner].code == -9
    assert all(o.code == 0 for o in survivors), [(o.code, o.output[-4000:]) for o in survivors]
    notes = "".join(o.output for o in survivors)
    assert "the MLflow tracking store http://127.0.0.1" in notes and "answers again" in notes, notes
    pool = outcome_of(array_task("cv-pool.sbatch", env, tmp_path / "pool.log", folder))
    assert pool.code == 0 and "every fold and the pooled results are already done" in pool.output, pool.output

    client, by_role = runs(servers.mlflow_url, experiment)
    assert len(by_role["cv"]) == 1 and len(by_role["fold"]) == 2 and len(by_role["trial"]) == 4
    for run in sum(by_role.values(), []):
        assert run.info.status == "FINISHED", (run.data.tags, run.info.status)
    (cv_run,) = by_role["cv"]
    assert len(client.get_metric_history(cv_run.info.run_id, "patient_auc")) == 1  # pooled once
    for fold, trials in fold_studies(storage).items():
        assert sorted(p for state, p in trials if state == "COMPLETE") == [0, 1], (fold, trials)  # each trial once
        assert all(state in ("COMPLETE", "FAIL") for state, _ in trials), (fold, trials)  # none left running
    assert ("FAIL", running.user_attrs[POSITION_ATTR]) in fold_studies(storage)["fold1"]  # the killed one
    assert_no_password_anywhere(servers, [o.output for o in [*outcomes.values(), pool]], [database, "mlflow"],
                                experiment)

    reference_store, reference = uninterrupted_run(tmp_path_factory)
    assert reference.code == 0, reference.output
    ours = faults.pooled(servers.mlflow_url, tmp_path / "ours", experiment)
    assert faults.differences(ours, faults.pooled(reference_store, tmp_path / "reference")) == []
