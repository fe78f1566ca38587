"""Fit one model: AdamW with warm-up and cosine decay, weight averaging (EMA), per-patient weights.

Small cohorts make every epoch's weights a noisy sample: validation AUC of raw
ResNet50 weights jumps by 0.4 from one epoch to the next. Three things steady it:
an exponential moving average of the weights (what is evaluated and kept), a
learning rate that warms up and decays to zero (the last weights are the calm
ones), and BatchNorm statistics recomputed for the averaged weights (the running
statistics belong to the raw weights, not to their average).

A `Trainer` compiles its model once and is reused for every fit of the same graph
(weights and optimizer state are reset, the schedule lives in variables), since
tracing ResNet50's training step costs tens of seconds on a CPU. No tracking here:
callers get the history and may pass callbacks (a pruning callback, a logger).
"""

from __future__ import annotations

import math
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from vfrac.model.network import VariableDropout

SMOOTHING = 3  # epochs in the moving average that picks the best epoch and stops early
_RECALIBRATION_FORWARD = weakref.WeakKeyDictionary()  # model -> its traced training-mode forward pass


@keras.saving.register_keras_serializable(package="vfrac")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak`, then half a cosine down to zero at `total_steps`.

    The three numbers are variables, so a compiled training step follows new values.
    """

    def __init__(self, peak: float = 0.0, warmup_steps: int = 0, total_steps: int = 1):
        self.peak = keras.Variable(0.0, trainable=False, name="lr_peak")
        self.warmup_steps = keras.Variable(0.0, trainable=False, name="lr_warmup_steps")
        self.total_steps = keras.Variable(1.0, trainable=False, name="lr_total_steps")
        self.set(peak, warmup_steps, total_steps)

    def set(self, peak: float, warmup_steps: int, total_steps: int) -> None:
        self.peak.assign(float(peak))
        self.warmup_steps.assign(float(warmup_steps))
        self.total_steps.assign(float(max(total_steps, 1)))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup, total, peak = self.warmup_steps.value, self.total_steps.value, self.peak.value
        rising = peak * (step + 1.0) / ops.maximum(warmup, 1.0)
        progress = ops.clip((step - warmup) / ops.maximum(total - warmup, 1.0), 0.0, 1.0)
        falling = 0.5 * peak * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < warmup, rising, falling)

    def get_config(self):
        return {"peak": float(self.peak.numpy()), "warmup_steps": int(self.warmup_steps.numpy()),
                "total_steps": int(self.total_steps.numpy())}


@keras.saving.register_keras_serializable(package="vfrac")
class VariableDecayAdamW(keras.optimizers.AdamW):
    """AdamW whose decoupled weight decay is a variable, so a compiled step follows new values."""

    def __init__(self, weight_decay: float = 0.004, **kwargs):
        super().__init__(weight_decay=float(weight_decay), **kwargs)
        self.weight_decay = keras.Variable(float(weight_decay), trainable=False, dtype="float32",
                                           name="weight_decay_rate")

    def get_config(self):
        return super().get_config() | {"weight_decay": float(ops.convert_to_numpy(self.weight_decay))}

    def _apply_weight_decay(self, variables):
        """Keras' decay, with the learning-rate schedule read once per step instead of once per variable.

        Keras reads `self.learning_rate` inside its loop over variables, which puts 214
        copies of the schedule into ResNet50's traced training step (7 s of tracing).
        """
        learning_rate = self.learning_rate
        for variable in variables:
            if self._use_weight_decay(variable):
                decay = ops.cast(self.weight_decay, variable.dtype) * ops.cast(learning_rate, variable.dtype)
                variable.assign(variable - variable * decay)


class Trainer:
    """A compiled model to fit again and again: each `fit` starts from the same initial weights.

    Learning rate, weight decay and dropout are variables, so every setting a tuner
    tries runs on the one traced graph.
    """

    def __init__(self, model_fn, ema_momentum: float = 0.98, jit_compile: bool | str = "auto"):
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), received {ema_momentum}")
        self.model = model_fn()
        self.dropouts = [layer for layer in self.model.layers if isinstance(layer, VariableDropout)]
        # Weights, BatchNorm statistics and the dropout layers' rate and random state: a
        # fit gives the same result whatever the model fitted before.
        self.initial_state = [variable.numpy() for variable in self.model.variables]
        self.schedule = WarmupCosine()
        self.optimizer = VariableDecayAdamW(learning_rate=self.schedule, weight_decay=0.0,
                                            use_ema=ema_momentum > 0, ema_momentum=ema_momentum)
        self.model.compile(optimizer=self.optimizer, loss=keras.losses.BinaryCrossentropy(),
                           metrics=[keras.metrics.AUC(name="auc")], jit_compile=jit_compile)
        # The optimizer's 642 variables (moments, averages) made now, eagerly: made inside the
        # first training step instead, they make TensorFlow trace that step twice (about 15 s
        # for ResNet50 on a CPU) and build their initialisers in the graph.
        self.optimizer.build(self.model.trainable_variables)

    def fit(self, train_ds, val_ds=None, epochs: int = 10, learning_rate: float = 3e-4, weight_decay: float = 1e-4,
            dropout: float | None = None, seed: int | None = None, warmup_epochs: float = 1.0,
            patience: int | None = None, callbacks=(), verbose: int = 0):
        """Train from the initial weights; returns the history dict with "best_epoch" (1-based).

        `dropout` sets the rate of the model's `VariableDropout` layers (None: as built),
        `seed` their random stream (None: the stream they were built with).

        `train_ds` must have a known length (vfrac's datasets do). With `val_ds`, each
        epoch is validated with the averaged weights; the best epoch is the peak of the
        validation AUC smoothed over SMOOTHING epochs, and training stops `patience`
        epochs after it. The model ends with the averaged weights of the last epoch and
        BatchNorm statistics recomputed for them on `train_ds`.
        """
        if epochs < 1 or (patience is not None and patience < 1):
            raise ValueError(f"epochs and patience must be >= 1, received {epochs}, {patience}")
        if weight_decay < 0 or (dropout is not None and not 0.0 <= dropout < 1.0):
            raise ValueError(f"weight_decay must be >= 0 and dropout in [0, 1), received {weight_decay}, {dropout}")
        steps = int(train_ds.cardinality())
        if steps <= 0:
            raise ValueError("the training dataset must have a known, finite length (cardinality)")
        self._reset()
        self.schedule.set(learning_rate, round(warmup_epochs * steps), epochs * steps)
        self.optimizer.weight_decay.assign(weight_decay)
        for layer in self.dropouts:
            if dropout is not None:
                layer.rate.assign(dropout)
            if seed is not None:
                layer.seed_generator.state.assign([seed, 0])
        watch = SmoothedStopping(patience) if val_ds is not None else None
        extra = [keras.callbacks.SwapEMAWeights()] if self.optimizer.use_ema and val_ds is not None else []
        history = self.model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=verbose,
                                 callbacks=[*extra, *([watch] if watch else []), *callbacks])
        result = dict(history.history)  # Keras has put the averaged weights in the model
        recalibrate_batchnorm(self.model, train_ds)
        result["best_epoch"] = watch.best_epoch if watch else len(result["loss"])
        return result

    def _reset(self) -> None:
        for variable, value in zip(self.model.variables, self.initial_state, strict=True):
            variable.assign(value)
        for variable in self.optimizer.variables:  # step count, moments and averages
            variable.assign(ops.zeros(variable.shape, variable.dtype))


class SmoothedStopping(keras.callbacks.Callback):
    """Best epoch and early stopping on val_auc averaged over the last SMOOTHING epochs."""

    def __init__(self, patience: int | None):
        super().__init__()
        self.patience, self.values, self.best_epoch = patience, [], 1

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(float((logs or {}).get("val_auc", np.nan)))
        smoothed = smooth(self.values)
        self.best_epoch = int(np.nanargmax(smoothed)) + 1 if np.isfinite(smoothed).any() else epoch + 1
        if self.patience is not None and epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True


def smooth(values, window: int = SMOOTHING) -> np.ndarray:
    """Trailing moving average (shorter at the start), NaN-aware."""
    values = np.asarray(values, dtype=float)
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        part = values[max(0, i - window + 1): i + 1]
        if np.isfinite(part).any():
            out[i] = np.nanmean(part)
    return out


def recalibrate_batchnorm(model: keras.Model, dataset, max_images: int = 2048) -> None:
    """Recompute every trainable BatchNorm layer's statistics for the model's current weights.

    The running statistics were gathered while the raw weights moved; the averaged
    weights need their own (as stochastic weight averaging recomputes them). Batches
    run in training mode with momentum 0 so each gives its own statistics; their mean
    is kept. The forward pass is traced once per model (a few seconds; eager it would
    cost four times as much) with the momentum at 0, which tracing reads: the traced
    function serves only this, and a `Trainer` refitting its model reuses it.
    """
    layers = [layer for layer in model.layers
              if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)] for layer in layers]
    seen = batches = 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        if model not in _RECALIBRATION_FORWARD:
            _RECALIBRATION_FORWARD[model] = tf.function(lambda images: model(images, training=True),
                                                        reduce_retracing=True)
        forward = _RECALIBRATION_FORWARD[model]
        for batch in dataset:
            images = batch[0]
            forward(images)
            for total, layer in zip(sums, layers, strict=True):
                total[0] += np.asarray(layer.moving_mean)
                total[1] += np.asarray(layer.moving_variance)
            batches += 1
            seen += int(tf.shape(images)[0])
            if seen >= max_images:
                break
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    for total, layer in zip(sums, layers, strict=True):
        layer.moving_mean.assign(total[0] / batches)
        layer.moving_variance.assign(total[1] / batches)
