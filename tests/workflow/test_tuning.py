"""The search space: a point of it as TrialParams, drawn through Optuna's FixedTrial."""

import dataclasses

import optuna
import pytest

from experiments.tuning import DEFAULTS, PRUNERS, SEARCHED, TrialParams, fold_study, suggest

POINT = {"learning_rate": 1e-4, "weight_decay": 1e-3, "dropout": 0.2, "batch_size": 32, "augment_strength": 1.0,
         "window_level": 300.0, "window_width": 1500.0}


def test_a_fixed_point_comes_back_as_its_trial_params():
    params = suggest(optuna.trial.FixedTrial(POINT), pretrained=False)
    assert params == TrialParams(**POINT, freeze_stages=0)
    assert params.window == (300.0, 1500.0) and params.as_dict() == POINT | {"freeze_stages": 0}
    assert set(SEARCHED) == set(POINT)


def test_pretrained_weights_add_the_frozen_stages_to_the_search():
    params = suggest(optuna.trial.FixedTrial(POINT | {"freeze_stages": 2}), pretrained=True)
    assert params.freeze_stages == 2
    with pytest.raises(ValueError):  # FixedTrial refuses a parameter it was not given
        suggest(optuna.trial.FixedTrial(POINT), pretrained=True)


def test_optuna_params_without_frozen_stages_read_back_with_the_default():
    assert TrialParams.from_values(POINT) == TrialParams(**POINT)
    assert TrialParams.from_values(DEFAULTS.as_dict()) == DEFAULTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.learning_rate = 1.0


def test_pruners_by_name_and_an_unknown_one_refused(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    kinds = {name: type(fold_study(storage, f"study-{name}", name).pruner).__name__ for name in PRUNERS}
    assert kinds == {"median": "MedianPruner", "hyperband": "HyperbandPruner"}
    with pytest.raises(ValueError, match="pruner must be one of"):
        fold_study(storage, "study-x", "none")
