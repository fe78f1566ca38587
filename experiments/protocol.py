"""One outer fold: tune on its training patients only, train the final model, predict its test patients.

The outer test patients are never seen by the tuner: trials split the fold's training
patients again (inner validation), and the final model is trained on all of them for
the best trial's number of epochs. With no trials (`--trials 0`, the demo) the final
model is trained at once with the default settings for `--epochs` epochs: on a small
cohort an inner validation split of a few patients ranks settings by noise. The
classical baseline is fitted on the same training patients and tested on the same
test patients.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np
import optuna
from optuna_integration import KerasPruningCallback

from experiments.claims import OWNER_ATTR, fail_dead, heartbeat
from experiments.config import ModelSettings, ProtocolSettings, RunConfig, TrainingSettings
from experiments.fold_data import FoldData
from experiments.model_package import contract, log_model, provenance
from experiments.results import BASELINE_COLUMNS, SLICE_COLUMNS, write_rows
from experiments.stores import lost
from experiments.tracking import Tracker
from experiments.tuning import (
    DEFAULTS,
    POSITION_ATTR,
    TrialParams,
    claim_trial,
    fold_study,
    others_running,
    pruning_summary,
    remaining,
    suggest,
)
from vfrac.data.pipeline import Augmentation, make_dataset
from vfrac.data.splits import Split, inner_splits
from vfrac.model.baseline import baseline_fold
from vfrac.model.network import build_classifier
from vfrac.model.predictor import Predictor
from vfrac.model.train import Trainer
from vfrac.run_tree import FOLD_TAG, TRIAL_ROLE
from vfrac.stats.metrics import aggregate, auc, evaluate

_TRAINERS: dict[tuple, Trainer] = {}  # the one compiled model of this process, by what its graph bakes in


def trainer(model: ModelSettings, seed: int, freeze_stages: int) -> Trainer:
    """The compiled model for these settings: built and traced once, reused by every fold and trial.

    Tracing ResNet50's training step costs about 20 s on a CPU; only settings that shape
    the graph (the model settings and the frozen stages) need a new one, as learning rate,
    weight decay and dropout are variables. Its initial weights come from the run's seed,
    which is also the global seed of every training dataset (`fit`).
    """
    key = (seed, model, freeze_stages)
    if key not in _TRAINERS:
        _TRAINERS.clear()
        keras.utils.set_random_seed(seed)
        _TRAINERS[key] = Trainer(lambda: build_classifier(model.input_size, weights=model.weights,
                                                          freeze_stages=freeze_stages, precision=model.precision,
                                                          arch=model.arch, conv_gradient=model.conv_gradient),
                                 ema_momentum=model.ema_momentum)
    return _TRAINERS[key]


def fit(model: ModelSettings, patience: int, run_seed: int, params: TrialParams, data: FoldData, train_ids,
        epochs: int, seed: int, val_ids=None, callbacks=()):
    """Fit on train_ids (validating on val_ids when given); returns (model, history).

    `seed` fixes the batches and the dropout masks. Not through `keras.utils.set_random_seed`:
    a new global seed makes TensorFlow trace the training step again (about 12 s at 32 px).
    The trainer comes first: it sets the run's global seed, which tf.data's seeded
    shuffles and draws combine with their own; a process's first datasets made before it
    drew other batches, so a fold resumed in a fresh process trained differently.
    """
    fitter = trainer(model, run_seed, params.freeze_stages)
    train, _ = make_dataset({p: data.entries[p] for p in train_ids}, data.labels, model.input_size,
                            params.window, training=True, seed=seed, batch_size=params.batch_size,
                            augmentation=Augmentation(strength=params.augment_strength))
    val = None
    if val_ids is not None:
        val, _ = make_dataset({p: data.entries[p] for p in val_ids}, data.labels, model.input_size,
                              params.window, batch_size=64)
    history = fitter.fit(train, val, epochs=epochs, learning_rate=params.learning_rate,
                         weight_decay=params.weight_decay, dropout=params.dropout, seed=seed,
                         patience=patience, callbacks=callbacks)
    return fitter.model, history


def predict_slices(model, input_size: int, window, protocol: ProtocolSettings, data: FoldData, test_ids):
    """[(patient_id, slice)] of every crop of test_ids, and the model's probability of each."""
    predictor = Predictor.single(model, input_size, window, protocol.aggregation, protocol.threshold)
    prediction = predictor.predict_entries({p: data.entries[p] for p in test_ids}, data.labels)
    return prediction.index, prediction.slices


def chosen_settings(training: TrainingSettings, study: optuna.Study | None) -> tuple[TrialParams, int, float | None]:
    """(settings, epochs, best inner AUC) of the best trial, or the defaults when there is none."""
    params, epochs, best_value = replace(DEFAULTS, batch_size=training.batch_size), training.epochs, None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if study else []
    if complete:  # else no tuning, or every trial was pruned or failed: the defaults
        best = max(sorted(complete, key=lambda t: t.user_attrs[POSITION_ATTR]), key=lambda t: t.value)
        params, best_value = TrialParams.from_values(best.params), best.value
        epochs = int(best.user_attrs.get("best_epoch", training.epochs))
    return params, epochs, best_value


@dataclass(frozen=True)
class Unit:
    """What a tuning study serves: an outer fold, or the final model on every patient.

    `index` places the unit's seeds and its trials' fold tag: outer folds 0..K-1, the final
    model K, after them, so its seeds never repeat a fold's.
    """

    name: str
    index: int


def fold_unit(fold: int) -> Unit:
    return Unit(f"fold {fold}", fold)


def final_unit(folds: int) -> Unit:
    return Unit("final", folds)


def tune(config: RunConfig, unit: Unit, split: Split, data: FoldData, storage, tracker: Tracker,
         unit_run: str, key: str) -> optuna.Study | None:
    """Run this unit's trials still unclaimed; each is an MLflow child run of the unit's run.

    Returns the study once every trial of the budget is done, None while trials of
    other processes still run.
    """
    fold, fold_run = unit.index, unit_run
    inner = inner_splits(split.train, [data.labels[p] for p in split.train], config.tuning.inner_folds,
                         seed=config.seed + fold)
    study = fold_study(storage, f"vfrac-{key}-{unit.name.replace(' ', '')}", pruner=config.tuning.pruner)
    for dead in fail_dead(storage, study):
        _close_dead_trial_run(tracker, fold_run, dead)

    def objective(trial: optuna.Trial, position: int) -> float:
        params = suggest(trial, pretrained=config.model.weights is not None)
        run = tracker.child_run(fold_run, TRIAL_ROLE, {FOLD_TAG: fold, POSITION_ATTR: position},
                                name=f"{unit.name} trial {position}")
        tracker.restart(run)
        tracker.params(run, params.as_dict())
        scores, epochs_seen = [], []
        counter = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs_seen.append(epoch))
        try:
            for number, inner_split in enumerate(inner):
                pruning = [counter, KerasPruningCallback(trial, "val_auc")] if number == 0 else []
                model, history = fit(config.model, config.training.patience, config.seed, params, data,
                                     inner_split.train, config.training.epochs,
                                     seed=config.seed + 1000 * fold + position, val_ids=inner_split.test,
                                     callbacks=pruning)
                index, probabilities = predict_slices(model, config.model.input_size, params.window, config.protocol,
                                                      data, inner_split.test)
                ids, labels, patient_p = aggregate([p for p, _ in index], probabilities,
                                                   [data.labels[p] for p, _ in index], config.protocol.aggregation)
                scores.append(auc(labels, patient_p))
                trial.set_user_attr("best_epoch", history["best_epoch"])
                for epoch, value in enumerate(history.get("val_auc", [])):
                    tracker.metrics(run, {"inner_val_slice_auc": value}, step=epoch)
        except optuna.TrialPruned:
            tracker.metrics(run, {"epochs_trained": len(epochs_seen)})
            tracker.finish(run, status="KILLED")
            raise
        except BaseException as error:
            tracker.fail(run, error)
            raise
        score = float(np.nanmean(scores))
        tracker.metrics(run, {"inner_val_patient_auc": score, "best_epoch": trial.user_attrs["best_epoch"]})
        tracker.finish(run)
        return score

    if to_run := remaining(study, config.tuning.trials):
        print(f"{unit.name}: tuning, {to_run} of {config.tuning.trials} trial(s) to run", flush=True)
    while claimed := claim_trial(storage, study, config.tuning.trials, seed=config.seed + 1000 * fold):
        trial, trial_id, position = claimed
        try:
            with heartbeat(storage, trial_id):
                value = objective(trial, position)
            study.tell(trial, value)
        except optuna.TrialPruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except BaseException as error:
            if not lost(error, storage.store):  # else its heartbeats stop, and it is failed as stale
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        _report_trial(unit.name, position, study.trials[trial.number])
    return None if others_running(study) else study


def _report_trial(unit: str, position: int, trial: optuna.trial.FrozenTrial) -> None:
    value = "" if trial.value is None else f", inner-validation patient AUC {trial.value:.3f}"
    if trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
        value = f", last validation AUC (slices) {list(trial.intermediate_values.values())[-1]:.3f}"
    print(f"{unit} trial {position}: {trial.state.name.lower()} after "
          f"{len(trial.intermediate_values)} epoch(s){value}", flush=True)


def _close_dead_trial_run(tracker: Tracker, fold_run: str, trial: optuna.trial.FrozenTrial) -> None:
    """The MLflow run of a trial whose process died: KILLED, saying so; the trial is re-run."""
    position = trial.user_attrs.get(POSITION_ATTR)
    for run in tracker.children(fold_run, TRIAL_ROLE):
        if run.data.tags.get(POSITION_ATTR) == str(position) and run.info.status == "RUNNING":
            tracker.fail(run.info.run_id, f"its process died ({trial.user_attrs.get(OWNER_ATTR, 'unknown')})",
                         status="KILLED")


def final_model(config: RunConfig, fold: int, split: Split, data: FoldData, study: optuna.Study | None,
                tracker: Tracker, fold_run: str) -> tuple[list[dict], dict[str, float]]:
    """Train the fold's final model with the best trial's settings (or the defaults), predict its
    test patients, fit the baseline beside it; log all to the fold run and mark it done.

    Returns the fold's slice rows and the seconds spent training and on the baseline."""
    params, epochs, best_value = chosen_settings(config.training, study)
    started = time.perf_counter()
    print(f"fold {fold}: final model on all {len(split.train)} training patients, {epochs} epoch(s)"
          + ("" if config.tuning.trials else " with the default settings (no tuning)"), flush=True)
    losses = epoch_lines(f"fold {fold}", epochs)
    model, history = fit(config.model, config.training.patience, config.seed, params, data, split.train, epochs,
                         seed=config.seed + fold, callbacks=[losses])
    index, probabilities = predict_slices(model, config.model.input_size, params.window, config.protocol, data,
                                          split.test)
    training_seconds = time.perf_counter() - started

    for epoch, loss in enumerate(history["loss"]):
        tracker.metrics(fold_run, {"train_loss": loss, "train_slice_auc": history["auc"][epoch]}, step=epoch)
    started = time.perf_counter()
    baseline = baseline_fold({p: data.entries[p] for p in split.train}, data.labels,
                             {p: data.entries[p] for p in split.test}, seed=config.seed + fold)
    baseline_seconds = time.perf_counter() - started
    baseline_rows = [{"patient_id": pid, "fold": fold, "label": data.labels[pid], "probability": p}
                     for pid, p in baseline.items()]
    rows = [{"patient_id": pid, "fold": fold, "slice": z, "label": data.labels[pid], "probability": float(p)}
            for (pid, z), p in zip(index, probabilities, strict=True)]
    result = evaluate([r["patient_id"] for r in rows], [r["label"] for r in rows],
                      [r["probability"] for r in rows], config.protocol.threshold, config.protocol.aggregation,
                      n_boot=config.protocol.n_boot, seed=config.seed)
    baseline_auc = auc([r["label"] for r in baseline_rows], [r["probability"] for r in baseline_rows])
    print(f"fold {fold}: per-patient AUC {result['patient']['auc']:.3f} ({config.protocol.aggregation}), "
          f"baseline {baseline_auc:.3f}", flush=True)
    tracker.params(fold_run, {f"best_{k}": v for k, v in params.as_dict().items()} | {"final_epochs": epochs})
    tracker.metrics(fold_run, fold_metrics(result) | {"best_inner_val_patient_auc": best_value,
                                                      "baseline_patient_auc": baseline_auc,
                                                      "final_training_seconds": training_seconds}
                    | (pruning_summary(study, config.training.epochs) if study else {}))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_rows(folder / "slices.csv", rows, SLICE_COLUMNS)
        write_rows(folder / "baseline.csv", baseline_rows, BASELINE_COLUMNS)
        tracker.artifacts(fold_run, folder / "slices.csv", "predictions")
        tracker.artifacts(fold_run, folder / "baseline.csv", "predictions")
        expected = {"patient_auc": result["patient"]["auc"], "measured_on": f"fold {fold}'s test patients"}
        log_model(tracker, fold_run, model, contract(config, params, provenance(tracker, fold_run, "fold", fold=fold),
                                                     expected, epochs))
        if study:
            (folder / "study.md").write_text(study_summary(study, config.training.epochs))
            tracker.artifacts(fold_run, folder / "study.md")
    tracker.finish(fold_run)
    return rows, {"final_training": training_seconds, "baseline": baseline_seconds}


def epoch_lines(unit: str, epochs: int) -> keras.callbacks.Callback:
    """A progress line per epoch of a final model's training."""
    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
        f"{unit}: epoch {epoch + 1}/{epochs}, training loss {logs['loss']:.3f}, slice AUC {logs['auc']:.3f}",
        flush=True))


def fold_metrics(result: dict) -> dict:
    names = ("sensitivity", "specificity", "accuracy", "auc")
    return {f"{level}_{name}": result[level][name] for level in ("slice", "patient") for name in names}


def study_summary(study: optuna.Study, epochs: int) -> str:
    lines = [f"# Optuna study {study.study_name}", "", "Trials in the order they ran; a FAIL whose settings "
             "run again later was killed with its process and re-run.", "",
             "| trial | position | state | value | epochs | params |", "| --- | --- | --- | --- | --- | --- |"]
    for t in study.trials:
        if not t.params:  # a claim that lost the race for the budget's last trial: never ran
            continue
        value = "" if t.value is None else f"{t.value:.3f}"
        lines.append(f"| {t.number} | {t.user_attrs.get(POSITION_ATTR, '')} | {t.state.name} | {value} | "
                     f"{len(t.intermediate_values)} | {t.params} |")
    summary = pruning_summary(study, epochs)
    lines += ["", f"Pruned trials: {summary['trials_pruned']}; epochs saved by pruning: {summary['epochs_saved']}."]
    return "\n".join(lines) + "\n"
