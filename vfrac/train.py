"""Fit one model: AdamW, binary cross-entropy, early stopping with the best weights kept.

No tracking here: the caller gets the model and its history, and may pass callbacks
(a pruning callback from the tuner, a logger) to watch the fit.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

SCHEDULES = (None, "cosine")


def strategy() -> tf.distribute.Strategy:
    """MirroredStrategy across GPUs when there are several, else the default."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def fit(train_ds, val_ds, model_fn, epochs: int = 30, learning_rate: float = 1e-4,
        weight_decay: float = 1e-4, patience: int = 5, monitor: str = "val_auc",
        lr_schedule: str | None = None, callbacks=(), class_weight=None, verbose: int = 0):
    """Train model_fn() on train_ds; returns (model with the best weights, history dict).

    history holds Keras' per-epoch values plus "best_epoch" (1-based) of `monitor`.
    Without val_ds (a final model, its epochs chosen by tuning) all epochs are trained.
    """
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, received {lr_schedule!r}")
    if epochs < 1 or patience < 1:
        raise ValueError(f"epochs and patience must be >= 1, received {epochs}, {patience}")
    with strategy().scope():
        model = model_fn()
        rate = learning_rate
        if lr_schedule == "cosine":
            steps = int(train_ds.cardinality()) * epochs
            if steps <= 0:
                raise ValueError("a cosine schedule needs a dataset of known, finite length")
            rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=rate, weight_decay=weight_decay),
                      loss=keras.losses.BinaryCrossentropy(),
                      metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")])
    mode = "min" if "loss" in monitor else "max"
    stopping = [] if val_ds is None else [keras.callbacks.EarlyStopping(
        monitor=monitor, mode=mode, patience=patience, restore_best_weights=True)]
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, class_weight=class_weight,
                        callbacks=[*stopping, *callbacks], verbose=verbose)
    result = dict(history.history)
    if val_ds is None:
        result["best_epoch"] = len(result["loss"])
    else:
        values = np.asarray(result[monitor], dtype=float)
        result["best_epoch"] = int((np.nanargmin(values) if mode == "min" else np.nanargmax(values)) + 1)
    return model, result
