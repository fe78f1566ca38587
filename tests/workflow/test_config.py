"""The command's configuration in process: flags into RunConfig, and which errors become `error: ...`."""

import pytest

from experiments.config import resolve
from experiments.cv import main, parse_args
from vfrac.data.cache import CropSettings
from vfrac.errors import InputError


def test_crop_flags_reach_the_run_config_and_its_key(tmp_path):
    stores = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    default = resolve(parse_args(["--cohort", "manifest.csv", *stores]))
    custom = resolve(parse_args(["--cohort", "manifest.csv", "--margin", "0.2", "--box-mode", "union",
                                 "--context", "0.1", "--cache-size", "64", "--min-area", "0.5", *stores]))
    assert default.crops == CropSettings()
    assert custom.crops == CropSettings(margin=0.2, box_mode="union", context=0.1, cache_size=64,
                                                  min_area=0.5)
    assert default.key("cohort") != custom.key("cohort")


def test_tuning_and_call_flags_reach_the_run_config_and_its_key(tmp_path):
    stores = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    default = resolve(parse_args(["--cohort", "manifest.csv", *stores]))
    assert (default.tuning.inner_folds, default.tuning.pruner) == (1, "median")
    assert (default.protocol.threshold, default.protocol.aggregation) == (0.5, "mean")
    paper = resolve(parse_args(["--cohort", "manifest.csv", "--preset", "paper", *stores]))
    assert paper.protocol.aggregation == "max"  # the study's rule
    custom = resolve(parse_args(["--cohort", "manifest.csv", "--inner-folds", "3", "--pruner", "hyperband",
                                 "--threshold", "0.4", "--aggregation", "topk", *stores]))
    assert (custom.tuning.inner_folds, custom.tuning.pruner) == (3, "hyperband")
    assert (custom.protocol.threshold, custom.protocol.aggregation) == (0.4, "topk")
    keys = {resolve(parse_args(["--cohort", "manifest.csv", *flags, *stores])).key("cohort")
            for flags in ([], ["--inner-folds", "3"], ["--pruner", "hyperband"], ["--threshold", "0.4"],
                          ["--aggregation", "max"], ["--arch", "resnet-tiny"])}
    assert len(keys) == 6  # each changes the results, so each makes another run


@pytest.mark.parametrize("extra, message", [
    (["--fold", "5"], "--fold must be in 0..1"),
    (["--min-area", "1.5"], "crop settings: min_area must be in [0, 1]"),
    (["--margin", "-0.1"], "crop settings: margin and context must be >= 0"),
    (["--trials", "-1"], "--trials must be >= 0"),
    (["--epochs", "0"], "--epochs >= 1"),
    (["--input-size", "16"], "--input-size must be >= 32"),
    (["--inner-folds", "0"], "--inner-folds must be >= 1"),
    (["--threshold", "1.5"], "--threshold must be between 0 and 1"),
    (["--threshold", "0"], "--threshold must be between 0 and 1"),
    (["--arch", "resnet-tiny", "--weights", "imagenet"], "--weights imagenet exists for --arch resnet50 only"),
    (["--precision", "float32"], None),
])
def test_bad_flags_give_a_clear_error_and_exit_code_before_any_work(tmp_path, capsys, monkeypatch, extra, message):
    import experiments.runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(experiments.runner, "run", lambda config, *stores: 0)  # a good config goes no further here
    argv = ["--cohort", str(tmp_path / "manifest.csv"), "--folds", "2", "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db", *extra]
    assert main(argv) == (0 if message is None else 2)
    error = capsys.readouterr().err
    assert (message in error and error.startswith("error: ")) if message else error == "", error


@pytest.mark.parametrize("flag, value", [("--pruner", "none"), ("--aggregation", "median"), ("--preset", "x"),
                                         ("--arch", "resnet18")])
def test_a_value_outside_a_flags_choices_is_refused_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args([flag, value])
    assert stop.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback_and_an_input_error_does_not(tmp_path, capsys, monkeypatch):
    import experiments.runner

    monkeypatch.chdir(tmp_path)
    argv = ["--cohort", str(tmp_path / "manifest.csv"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
            "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    monkeypatch.setattr(experiments.runner, "run", lambda config, *stores: int("a bug"))  # a ValueError deep in a run
    with pytest.raises(ValueError, match="invalid literal"):
        main(argv)

    def bad_input(config, *stores):
        raise InputError("VF0001: the ROI is empty")

    monkeypatch.setattr(experiments.runner, "run", bad_input)
    assert main(argv) == 2 and "error: VF0001: the ROI is empty" in capsys.readouterr().err


# Settings keys recorded at 2544bdd: a run's key names its results in the stores (its CV run, its Optuna studies),
# so a change of the config's shape must give every existing run the same key, or reruns would start again.
RECORDED_KEYS = {
    "demo": ([], "df374cc1b44333d4"),
    "paper": (["--preset", "paper"], "a3874edc5c042a24"),
    "tiny": (["--folds", "2", "--trials", "2", "--epochs", "1", "--input-size", "32", "--arch", "resnet-tiny"],
             "ec6b2fe7f4403944"),
    "tuning": (["--inner-folds", "3", "--pruner", "hyperband", "--threshold", "0.4", "--aggregation", "topk",
                "--seed", "7"], "b2f26fddfb91eb3f"),
    "crops": (["--margin", "0.2", "--box-mode", "union", "--context", "0.1", "--cache-size", "64", "--min-area",
               "0.5"], "e6e474ea3cfdb4a3"),
    "model": (["--weights", "imagenet", "--precision", "bfloat16"], "be50231918e7cadd"),
    # where and how it runs, not what it computes: the demo's key
    "where": (["--fold", "1", "--no-explain", "--final", "--model-name", "m", "--experiment", "x",
               "--heartbeat-timeout", "30", "--store-timeout", "5"], "df374cc1b44333d4"),
}


@pytest.mark.parametrize("name", RECORDED_KEYS)
def test_the_settings_key_of_each_kind_of_run_is_the_one_recorded(name, tmp_path):
    flags, key = RECORDED_KEYS[name]
    stores = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    config = resolve(parse_args(["--cohort", "/cohorts/site-a/manifest.csv", *flags, *stores]))
    assert config.key("0123456789abcdef") == key


def test_the_paper_presets_grad_cam_layer_exists_in_the_tiny_network():
    """--preset paper --arch resnet-tiny checks a cohort quickly: its review's layer must be one the network has."""
    config = resolve(parse_args(["--cohort", "manifest.csv", "--preset", "paper", "--arch", "resnet-tiny"]))
    assert config.cam_layer == "conv5_block1_out"
    assert resolve(parse_args(["--cohort", "manifest.csv", "--preset", "paper"])).cam_layer == "conv5_block3_out"
    assert resolve(parse_args(["--arch", "resnet-tiny"])).cam_layer == "conv2_block3_out"  # the demo's: conv2 has 3
