"""Training: the warm-up cosine schedule, weight averaging, BatchNorm recalibration, one graph per model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vfrac.model.network import VariableDropout
from vfrac.model.train import SmoothedStopping, Trainer, WarmupCosine, recalibrate_batchnorm, smooth


def test_schedule_warms_up_linearly_then_follows_half_a_cosine_to_zero():
    schedule = WarmupCosine()
    schedule.set(1e-3, warmup_steps=10, total_steps=110)
    rate = lambda step: float(schedule(step))  # noqa: E731
    assert rate(0) == pytest.approx(1e-4) and rate(4) == pytest.approx(5e-4) and rate(9) == pytest.approx(1e-3)
    assert rate(10) == pytest.approx(1e-3)  # the peak, where the cosine starts
    assert rate(60) == pytest.approx(0.5e-3)  # half way down: (1 + cos(pi / 2)) / 2
    assert rate(110) == pytest.approx(0.0, abs=1e-12) and rate(500) == pytest.approx(0.0, abs=1e-12)
    schedule.set(2e-3, warmup_steps=0, total_steps=100)  # new values, the same graph
    assert rate(0) == pytest.approx(2e-3)


def test_smoothing_and_the_best_epoch_ignore_a_single_lucky_epoch():
    assert smooth([0.5, 0.7, 0.9, np.nan]).tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8])
    stopping = SmoothedStopping(patience=2)
    stopping.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    stopping.model.stop_training = False  # as fit() sets it
    for epoch, value in enumerate([0.5, 0.95, 0.5, 0.8, 0.8, 0.85, 0.6, 0.6]):
        stopping.on_epoch_end(epoch, {"val_auc": value})
        if stopping.model.stop_training:
            break
    # smoothed: .5, .725, .65, .75, .7, .817, .75, .683: the best is epoch 6, not the lone 0.95 of epoch 2
    assert stopping.best_epoch == 6 and epoch == 7 and stopping.model.stop_training


def test_batchnorm_statistics_are_recomputed_from_the_data():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.BatchNormalization(name="bn")(inputs)))
    data = np.random.default_rng(0).normal([5.0, -2.0, 0.0], [2.0, 1.0, 0.5], size=(512, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((data, np.zeros(512, "float32"))).batch(128)
    recalibrate_batchnorm(model, dataset)
    bn = model.get_layer("bn")
    assert np.asarray(bn.moving_mean) == pytest.approx(data.mean(axis=0), abs=1e-4)  # equal batches: exact mean
    assert np.asarray(bn.moving_variance) == pytest.approx(data.var(axis=0), rel=0.05)
    assert bn.momentum == 0.99  # restored
    # again on other data (the traced pass is reused): the statistics follow the new data
    shifted = dataset.map(lambda x, y: (x * 2.0 + 1.0, y))
    recalibrate_batchnorm(model, shifted)
    assert np.asarray(bn.moving_mean) == pytest.approx(data.mean(axis=0) * 2.0 + 1.0, abs=1e-3)
    assert np.asarray(bn.moving_variance) == pytest.approx(data.var(axis=0) * 4.0, rel=0.05)


def toy_data(seed, count=64):
    """Bright blob (label 1) or noise (label 0), 16 x 16: a task a small CNN learns in a few epochs."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0, 1, (count, 16, 16, 1)).astype("float32")
    labels = (np.arange(count) % 2).astype("float32")
    images[labels == 1, 5:11, 5:11] += 2.0
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)


def small_model():
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = VariableDropout(0.3)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def test_a_trainer_reuses_its_graph_restarts_from_the_same_weights_and_keeps_the_average():
    keras.utils.set_random_seed(0)
    trainer = Trainer(small_model, ema_momentum=0.9)
    train, val = toy_data(1), toy_data(2)
    first = trainer.fit(train, val, epochs=6, learning_rate=1e-2, warmup_epochs=1)
    step = trainer.model.train_function
    weights = [w.copy() for w in trainer.model.get_weights()]
    trainer.fit(toy_data(3), epochs=2, learning_rate=1e-2)  # another fit in between: no trace of it may remain
    second = trainer.fit(train, val, epochs=6, learning_rate=1e-2, warmup_epochs=1)
    assert trainer.model.train_function is step  # no new trace
    assert second["loss"] == pytest.approx(first["loss"], rel=1e-4)  # weights, dropout and optimizer state reset
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(weights, trainer.model.get_weights(), strict=True))
    assert int(trainer.optimizer.iterations) == 6 * 4
    assert first["val_auc"][-1] > 0.9 and 1 <= first["best_epoch"] <= 6
    averages = [np.asarray(v) for v in trainer.optimizer.variables if v.path.endswith("_average")]  # EMA copies
    assert all(np.allclose(a, np.asarray(w)) for a, w in zip(averages, trainer.model.trainable_weights, strict=True))


def test_dropout_weight_decay_and_seed_change_without_a_new_trace():
    keras.utils.set_random_seed(0)
    trainer = Trainer(small_model, ema_momentum=0.0)  # the raw weights, to see the decay
    traces, train_step = [], trainer.model.train_step
    trainer.model.train_step = lambda data: traces.append(1) or train_step(data)  # Python runs it only to trace
    train = toy_data(1)
    trainer.fit(train, epochs=2, learning_rate=1e-2, weight_decay=0.0, dropout=0.0)
    plain, traced = np.abs(trainer.model.layers[-1].kernel.numpy()).sum(), len(traces)
    trainer.fit(train, epochs=2, learning_rate=1e-2, weight_decay=20.0, dropout=0.0)
    decayed = np.abs(trainer.model.layers[-1].kernel.numpy()).sum()
    assert decayed < 0.5 * plain  # each step multiplies weights by (1 - 20 * rate)
    losses = [trainer.fit(train, epochs=2, learning_rate=1e-2, weight_decay=0.0, dropout=0.9, seed=seed)["loss"]
              for seed in (1, 1, 2)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0] != pytest.approx(losses[2], rel=1e-3)
    assert len(traces) == traced == 1  # one trace: the optimizer's variables exist before the first step
    assert float(trainer.dropouts[0].rate) == pytest.approx(0.9)


def test_variable_dropout_drops_its_rate_and_keeps_the_mean_in_training_only():
    layer = VariableDropout(0.25, seed=1)
    inputs = np.ones((200, 100), "float32")
    out = np.asarray(layer(inputs, training=True))
    assert np.mean(out == 0) == pytest.approx(0.25, abs=0.02) and out.mean() == pytest.approx(1.0, abs=0.05)
    assert np.array_equal(np.asarray(layer(inputs, training=False)), inputs)
    layer.rate.assign(0.0)
    assert np.array_equal(np.asarray(layer(inputs, training=True)), inputs)
    assert VariableDropout.from_config(layer.get_config()).initial_rate == 0.0
    with pytest.raises(ValueError, match="rate must be in"):
        VariableDropout(1.0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="ema_momentum must be in"):
        Trainer(small_model, ema_momentum=1.0)
    trainer = Trainer(small_model)
    with pytest.raises(ValueError, match="known, finite length"):
        trainer.fit(toy_data(1).repeat(), epochs=1)
    with pytest.raises(ValueError, match="epochs and patience must be >= 1"):
        trainer.fit(toy_data(1), epochs=0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0 and dropout in"):
        trainer.fit(toy_data(1), epochs=1, dropout=1.0)


def test_a_trained_model_saves_and_loads_with_its_optimizer(tmp_path):
    trainer = Trainer(small_model)
    trainer.fit(toy_data(1), epochs=1, learning_rate=5e-3)
    trainer.model.save(tmp_path / "model.keras")
    restored = keras.models.load_model(tmp_path / "model.keras")
    assert float(restored.optimizer.learning_rate) == pytest.approx(float(trainer.optimizer.learning_rate))
    assert float(restored.optimizer.weight_decay) == pytest.approx(1e-4)
    batch = next(iter(toy_data(2)))[0]
    assert np.allclose(restored.predict(batch, verbose=0), trainer.model.predict(batch, verbose=0), atol=1e-6)
