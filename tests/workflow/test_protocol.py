"""experiments.protocol: a fit depends on its settings and seeds only, not on what the process ran before."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from experiments import protocol
from experiments.config import RunConfig
from experiments.tuning import DEFAULTS
from tests.data.test_pipeline import write_patients


@pytest.mark.slow
def test_a_processs_first_fit_equals_a_later_one_with_the_same_seed(tmp_path):
    entries, labels = write_patients(tmp_path, [1, 0, 1, 0, 1, 0, 1, 0])
    config = RunConfig(preset="demo", cohort="", folds=2, trials=0, epochs=1, input_size=32, seed=3, experiment="",
                       tracking_uri="", storage="", fold=None, explain=False, patience=3, batch_size=4, n_boot=10,
                       arch="resnet-tiny")
    data = protocol.FoldData(entries, labels)
    params = dataclasses.replace(DEFAULTS, batch_size=4)

    def fit_once():
        model, history = protocol.fit(config, params, data, sorted(entries), epochs=1, seed=7)
        return history["loss"], model.get_layer("malignancy").get_weights()[0]

    protocol._TRAINERS.clear()
    tf.random.set_seed(None)  # a fresh process: no global seed yet
    first_loss, first_weights = fit_once()
    later_loss, later_weights = fit_once()  # the same trainer, after the global seed it set
    assert first_loss == later_loss and np.array_equal(first_weights, later_weights)
