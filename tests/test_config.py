"""The command's configuration in process: flags into RunConfig, and which errors become `error: ...`."""

import pytest

from experiments.config import resolve
from experiments.cv import main, parse_args
from vfrac.cache import CropSettings
from vfrac.errors import InputError


def test_crop_flags_reach_the_run_config_and_its_key(tmp_path):
    stores = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    default = resolve(parse_args(["--cohort", "manifest.csv", *stores]))
    custom = resolve(parse_args(["--cohort", "manifest.csv", "--margin", "0.2", "--box-mode", "union",
                                 "--context", "0.1", "--cache-size", "64", "--min-area", "0.5", *stores]))
    assert default.crop_settings() == CropSettings()
    assert custom.crop_settings() == CropSettings(margin=0.2, box_mode="union", context=0.1, cache_size=64,
                                                  min_area=0.5)
    assert default.key("cohort") != custom.key("cohort")


def test_a_bug_keeps_its_traceback_and_an_input_error_does_not(tmp_path, capsys, monkeypatch):
    import experiments.runner

    monkeypatch.chdir(tmp_path)
    argv = ["--cohort", str(tmp_path / "manifest.csv"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    monkeypatch.setattr(experiments.runner, "run", lambda config: int("a bug"))  # a ValueError deep in a run
    with pytest.raises(ValueError, match="invalid literal"):
        main(argv)

    def bad_input(config):
        raise InputError("VF0001: the ROI is empty")

    monkeypatch.setattr(experiments.runner, "run", bad_input)
    assert main(argv) == 2 and "error: VF0001: the ROI is empty" in capsys.readouterr().err
