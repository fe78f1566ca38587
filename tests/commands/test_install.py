"""vfrac as a package: the wheel installs into a fresh environment, its `vfrac` command runs, and a model vfrac
logged to MLflow loads there with `mlflow.pyfunc.load_model`, vfrac coming from the wheel."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from tests.shared_run import final_model_store

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """A new virtual environment holding the wheel; its other requirements are this environment's, through a .pth
    file (installing TensorFlow again would take minutes and gigabytes). Returns its bin folder."""
    folder = tmp_path_factory.mktemp("install")
    source = folder / "source"  # a copy: setuptools writes build/ and vfrac.egg-info/ beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(ROOT / name, source / name)
    for package in ("vfrac", "experiments", "explain"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
                    str(folder / "wheel"), str(source)], check=True, cwd=folder)
    (wheel,) = (folder / "wheel").glob("vfrac-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    python = folder / "venv" / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "requirements.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, cwd=folder)
    return python.parent


def run_there(environment, program, *args, cwd, env=None):
    """`program` (python, vfrac) of the new environment, without this clone on the path."""
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([str(environment / program), *args], cwd=cwd, env=clean | (env or {}),
                          capture_output=True, text=True, timeout=600)


def test_the_wheel_gives_the_vfrac_command_with_every_subcommand(environment, tmp_path):
    where = run_there(environment, "python", "-c", "import vfrac, experiments, explain; print(vfrac.__file__)",
                      cwd=tmp_path)
    assert where.returncode == 0 and "/venv/lib/" in where.stdout and str(ROOT) not in where.stdout, where
    listed = run_there(environment, "vfrac", "--help", cwd=tmp_path)
    assert listed.returncode == 0
    for name in ("cv", "prepare", "synth", "import", "review", "report", "predict", "validate", "doctor"):
        assert f"\n  {name} " in listed.stdout, listed.stdout
        helped = run_there(environment, "vfrac", name, "--help", cwd=tmp_path)
        assert helped.returncode == 0 and "usage:" in helped.stdout, (name, helped.stderr[-2000:])
    assert "--preset" in run_there(environment, "vfrac", "cv", "--help", cwd=tmp_path).stdout
    unknown = run_there(environment, "vfrac", "train", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown subcommand 'train'" in unknown.stderr


def test_a_logged_model_loads_with_pyfunc_where_only_the_wheel_gives_vfrac(environment, tmp_path_factory, tmp_path):
    folder, _, _ = final_model_store(tmp_path_factory)
    model = "models:/vfrac-resnet50/1"
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    requirements = Path(mlflow.artifacts.download_artifacts(f"{model}/requirements.txt", dst_path=str(tmp_path)))
    import vfrac

    assert f"vfrac=={vfrac.__version__}" in requirements.read_text().split()
    images = np.zeros((2, 32, 32, 3), np.float32)
    np.save(tmp_path / "images.npy", images)
    code = ("import sys, json, mlflow, numpy as np\n"
            "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
            "print(json.dumps(np.asarray(model.predict(np.load(sys.argv[2]))).ravel().tolist()))\n"
            "print(sys.modules['vfrac'].__file__)")
    loaded = run_there(environment, "python", "-c", code, model, str(tmp_path / "images.npy"), cwd=tmp_path,
                       env={"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    probabilities, origin = loaded.stdout.strip().splitlines()[-2:]
    assert "/venv/lib/" in origin
    values = json.loads(probabilities)
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
