"""One outer fold: tune on its training patients only, train the final model, predict its test patients.

The outer test patients are never seen by the tuner: trials split the fold's training
patients again (inner validation), and the final model is trained on all of them for
the best trial's number of epochs.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import optuna
from optuna_integration import KerasPruningCallback

from experiments.config import RunConfig
from experiments.results import SLICE_COLUMNS, write_rows
from experiments.tracking import Tracker
from experiments.tuning import DEFAULTS, fold_study, pruning_summary, remaining, suggest
from vfrac.metrics import aggregate, auc, evaluate
from vfrac.model import build_classifier
from vfrac.pipeline import Augmentation, class_weights, make_dataset
from vfrac.splits import Split, inner_splits
from vfrac.train import fit


@dataclass
class FoldData:
    """What a fold needs from the cohort: cache files and labels per patient id."""

    entries: dict  # patient_id -> cache file
    labels: dict  # patient_id -> 0/1


def train_and_predict(config: RunConfig, params: dict, data: FoldData, train_ids, test_ids, epochs: int,
                      seed: int, val_ids=None, callbacks=()):
    """Fit on train_ids (validating on val_ids when given) and predict test_ids, slice by slice."""
    keras.utils.set_random_seed(seed)  # the same seed gives the same initial weights and dropout
    window = (params["window_level"], params["window_width"])
    train, _ = make_dataset({p: data.entries[p] for p in train_ids}, data.labels, config.input_size, window,
                            training=True, seed=seed, batch_size=params["batch_size"],
                            augmentation=Augmentation(strength=params["augment_strength"]))
    val = None
    if val_ids is not None:
        val, _ = make_dataset({p: data.entries[p] for p in val_ids}, data.labels, config.input_size, window,
                              batch_size=64)
    model, history = fit(
        train, val, lambda: build_classifier(config.input_size, weights=config.weights, dropout=params["dropout"],
                                             freeze_stages=params.get("freeze_stages", 0)),
        epochs=epochs, learning_rate=params["learning_rate"], weight_decay=params["weight_decay"],
        patience=config.patience, callbacks=callbacks,
        class_weight=class_weights([data.labels[p] for p in train_ids]))
    test, index = make_dataset({p: data.entries[p] for p in test_ids}, data.labels, config.input_size, window,
                               batch_size=64)
    probabilities = model.predict(test, verbose=0)[:, 0]
    return model, history, index, probabilities


def tune(config: RunConfig, fold: int, split: Split, data: FoldData, storage, tracker: Tracker,
         fold_run: str, key: str) -> optuna.Study:
    """Run this fold's remaining trials; each is an MLflow child run of the fold."""
    inner = inner_splits(split.train, [data.labels[p] for p in split.train], config.inner_folds,
                         seed=config.seed + fold)
    study = fold_study(storage, f"vfrac-{key}-fold{fold}", seed=config.seed + fold, pruner=config.pruner)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, pretrained=config.weights is not None)
        run = tracker.child_run(fold_run, "trial", {"vfrac.fold": fold, "vfrac.trial": trial.number},
                                name=f"fold {fold} trial {trial.number}")
        tracker.params(run, params)
        scores, epochs_seen = [], []
        counter = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs_seen.append(epoch))
        try:
            for number, inner_split in enumerate(inner):
                pruning = [counter, KerasPruningCallback(trial, "val_auc")] if number == 0 else []
                _, history, index, probabilities = train_and_predict(
                    config, params, data, inner_split.train, inner_split.test, config.epochs,
                    seed=config.seed + 1000 * fold + trial.number, val_ids=inner_split.test, callbacks=pruning)
                ids, labels, patient_p = aggregate([p for p, _ in index], probabilities,
                                                   [data.labels[p] for p, _ in index], config.aggregation)
                scores.append(auc(labels, patient_p))
                trial.set_user_attr("best_epoch", history["best_epoch"])
                for epoch, value in enumerate(history.get("val_auc", [])):
                    tracker.metrics(run, {"inner_val_slice_auc": value}, step=epoch)
        except optuna.TrialPruned:
            tracker.metrics(run, {"epochs_trained": len(epochs_seen)})
            tracker.finish(run, status="KILLED")
            raise
        except BaseException:
            tracker.finish(run, done=False, status="FAILED")
            raise
        score = float(np.nanmean(scores))
        tracker.metrics(run, {"inner_val_patient_auc": score, "best_epoch": trial.user_attrs["best_epoch"]})
        tracker.finish(run)
        return score

    def report(study, trial):
        value = "" if trial.value is None else f", inner-validation patient AUC {trial.value:.3f}"
        if trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values:
            value = f", last validation AUC (slices) {list(trial.intermediate_values.values())[-1]:.3f}"
        print(f"fold {fold} trial {trial.number}: {trial.state.name.lower()} after "
              f"{len(trial.intermediate_values)} epoch(s){value}", flush=True)

    budget = remaining(study, config.trials)
    print(f"fold {fold}: tuning, {budget} of {config.trials} trial(s) to run", flush=True)
    if budget:
        study.optimize(objective, n_trials=budget, catch=(),
                       callbacks=[report, optuna.study.MaxTrialsCallback(config.trials, states=(
                           optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))])
    return study


def run_fold(config: RunConfig, fold: int, split: Split, data: FoldData, storage, tracker: Tracker,
             fold_run: str, key: str, timings: dict) -> list[dict]:
    """Tune, train the final model, predict the test patients; log all to the fold run."""
    started = time.perf_counter()
    study = tune(config, fold, split, data, storage, tracker, fold_run, key)
    timings["tuning"] = timings.get("tuning", 0.0) + time.perf_counter() - started
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda t: t.value)
        params, best_value = dict(best.params), best.value
        epochs = int(best.user_attrs.get("best_epoch", config.epochs))
    else:  # every trial pruned or failed: fall back to the defaults
        params, epochs, best_value = dict(DEFAULTS), config.epochs, None
    params.setdefault("freeze_stages", 0)
    started = time.perf_counter()
    print(f"fold {fold}: final model on all {len(split.train)} training patients, {epochs} epoch(s)", flush=True)
    model, _, index, probabilities = train_and_predict(config, params, data, split.train, split.test, epochs,
                                                       seed=config.seed + fold)
    timings["final_training"] = timings.get("final_training", 0.0) + time.perf_counter() - started
    rows = [{"patient_id": pid, "fold": fold, "slice": z, "label": data.labels[pid], "probability": float(p)}
            for (pid, z), p in zip(index, probabilities, strict=True)]
    result = evaluate([r["patient_id"] for r in rows], [r["label"] for r in rows],
                      [r["probability"] for r in rows], config.threshold, config.aggregation,
                      n_boot=config.n_boot, seed=config.seed)
    tracker.params(fold_run, {f"best_{k}": v for k, v in params.items()} | {"final_epochs": epochs})
    tracker.metrics(fold_run, fold_metrics(result) | {"best_inner_val_patient_auc": best_value}
                    | pruning_summary(study, config.epochs))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_rows(folder / "slices.csv", rows, SLICE_COLUMNS)
        tracker.artifacts(fold_run, folder / "slices.csv", "predictions")
        model.save(folder / "model.keras")
        tracker.artifacts(fold_run, folder / "model.keras", "model")
        (folder / "study.md").write_text(study_summary(study, config.epochs))
        tracker.artifacts(fold_run, folder / "study.md")
    tracker.finish(fold_run)
    return rows


def fold_metrics(result: dict) -> dict:
    names = ("sensitivity", "specificity", "accuracy", "auc")
    return {f"{level}_{name}": result[level][name] for level in ("slice", "patient") for name in names}


def study_summary(study: optuna.Study, epochs: int) -> str:
    lines = [f"# Optuna study {study.study_name}", "", "| trial | state | value | epochs | params |",
             "| --- | --- | --- | --- | --- |"]
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:.3f}"
        lines.append(f"| {t.number} | {t.state.name} | {value} | {len(t.intermediate_values)} | {t.params} |")
    summary = pruning_summary(study, epochs)
    lines += ["", f"Pruned trials: {summary['trials_pruned']}; epochs saved by pruning: {summary['epochs_saved']}."]
    return "\n".join(lines) + "\n"
