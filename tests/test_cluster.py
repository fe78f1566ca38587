"""The SLURM job array of examples/slurm/, run here as SLURM would: one fold per task, then the pooling job.

The tasks get the array variables SLURM sets and the environment the scripts document;
the password comes from a PGPASSFILE (~/.pgpass's format), not the storage URL. Their
pooled numbers must be those of one uninterrupted process on SQLite files.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from bench import bench_faults as faults
from experiments.stores import open_storage
from tests.mlflow_store import runs
from tests.shared_run import tiny_cohort, uninterrupted_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "examples" / "slurm"


def task(script: str, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SCRIPTS / script)], cwd=log.parent, env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


@pytest.mark.servers
@pytest.mark.slow
@pytest.mark.e2e
def test_the_job_array_scripts_run_one_fold_per_task_then_pool(servers, tmp_path, tmp_path_factory):
    manifest = tiny_cohort(tmp_path_factory)
    database, experiment = f"array_{uuid.uuid4().hex[:8]}", f"array-{uuid.uuid4().hex[:8]}"
    servers.new_database(database)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{servers.postgres_port}:{database}:vfrac:{servers.password}\n")
    passfile.chmod(0o600)
    storage = f"postgresql://vfrac@127.0.0.1:{servers.postgres_port}/{database}"  # no password in the URL
    env = faults.child_env({
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PGPASSFILE": str(passfile),
        "VFRAC_COHORT": str(manifest), "VFRAC_STORAGE": storage, "MLFLOW_TRACKING_URI": servers.mlflow_url,
        "VFRAC_CV_ARGS": " ".join([*faults.TINY, "--experiment", experiment, "--no-explain"]),
        "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_COUNT": "2"})
    tasks = [task("cv-folds.sbatch", env | {"SLURM_ARRAY_TASK_ID": str(fold)}, tmp_path / f"fold{fold}.log")
             for fold in (0, 1)]
    for number, process in enumerate(tasks):
        assert process.wait(timeout=900) == 0, (tmp_path / f"fold{number}.log").read_text()
    logs = [(tmp_path / f"fold{fold}.log").read_text() for fold in (0, 1)]
    for fold, log in enumerate(logs):
        assert f"fold {fold}: done" in log and f"fold {1 - fold}: tuning" not in log, log
    pool = task("cv-pool.sbatch", env, tmp_path / "pool.log")
    assert pool.wait(timeout=600) == 0, (tmp_path / "pool.log").read_text()
    pooling = (tmp_path / "pool.log").read_text()
    # The last fold task to finish pooled already; the pooling job finds it done (and adds what is missing: the
    # review, where the fold tasks ran with --no-explain and it does not).
    assert "every fold and the pooled results are already done" in pooling, pooling
    assert sum("pooled out-of-fold results, 12 patients" in log for log in logs) >= 1

    client, by_role = runs(servers.mlflow_url, experiment)
    assert len(client.get_metric_history(by_role["cv"][0].info.run_id, "patient_auc")) == 1  # pooled once
    assert len(by_role["cv"]) == 1 and len(by_role["fold"]) == 2 and len(by_role["trial"]) == 4
    assert all(r.info.status == "FINISHED" for r in sum(by_role.values(), []))
    studies = optuna.get_all_study_summaries(open_storage(servers.postgres_url(database)))
    assert sorted(s.n_trials for s in studies if "-fold" in s.study_name) == [2, 2]  # nothing run twice
    for log in [*logs, pooling]:
        assert servers.password not in log
    reference_store, reference = uninterrupted_run(tmp_path_factory)
    assert reference.code == 0, reference.output
    ours = faults.pooled(servers.mlflow_url, tmp_path / "ours", experiment)
    assert faults.differences(ours, faults.pooled(reference_store, tmp_path / "reference")) == []
