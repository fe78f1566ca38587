"""experiments.protocol: a fit depends on its settings and seeds only, not on what the process ran before."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from experiments import protocol
from experiments.config import (
    ModelSettings,
    ProtocolSettings,
    RunConfig,
    StoreSettings,
    TrainingSettings,
    TuningSettings,
)
from experiments.tuning import DEFAULTS
from tests.data.test_pipeline import write_patients
from vfrac.data.cache import CropSettings


@pytest.mark.slow
def test_a_processs_first_fit_equals_a_later_one_with_the_same_seed(tmp_path):
    entries, labels = write_patients(tmp_path, [1, 0, 1, 0, 1, 0, 1, 0])
    config = RunConfig(preset="demo", cohort="", seed=3, crops=CropSettings(),
                       model=ModelSettings(input_size=32, arch="resnet-tiny"),
                       training=TrainingSettings(epochs=1, patience=3, batch_size=4), tuning=TuningSettings(trials=0),
                       protocol=ProtocolSettings(folds=2, n_boot=10),
                       stores=StoreSettings(tracking_uri="", storage="", experiment=""), explain=False)
    data = protocol.FoldData(entries, labels)
    params = dataclasses.replace(DEFAULTS, batch_size=4)

    def fit_once():
        model, history = protocol.fit(config.model, config.training.patience, config.seed, params, data,
                                      sorted(entries), epochs=1, seed=7)
        return history["loss"], model.get_layer("malignancy").get_weights()[0]

    protocol._TRAINERS.clear()
    tf.random.set_seed(None)  # a fresh process: no global seed yet
    first_loss, first_weights = fit_once()
    later_loss, later_weights = fit_once()  # the same trainer, after the global seed it set
    assert first_loss == later_loss and np.array_equal(first_weights, later_weights)
