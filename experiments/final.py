"""The model to use (`experiments.cv --final`): the CV run's protocol applied to every patient.

Cross-validation estimates how well the method works; this trains the model that the
estimate describes. With the CV run's settings it tunes on all patients of the cohort
(inner validation as in a fold; none with `--trials 0`), trains on all of them, and
logs the result as the CV run's child `final` with its input contract
(experiments.model_package) and the cohort as its training dataset. It is registered
in the MLflow Model Registry with the CV run's pooled results as the version's
description: what to expect of it. A rerun reuses the finished final model.
"""

from __future__ import annotations

import time
from pathlib import Path

from experiments.claims import Claims
from experiments.config import RunConfig
from experiments.fold_data import FoldData
from experiments.model_package import contract, log_cohort, log_model, provenance, register
from experiments.protocol import chosen_settings, epoch_lines, final_unit, fit, tune
from experiments.stores import masked
from experiments.tracking import Tracker
from vfrac.data.splits import Split
from vfrac.run_tree import FINAL_ROLE, REGISTERED_TAG, SUMMARY


def registered_final_model(config: RunConfig, data: FoldData, storage, tracker: Tracker, claims: Claims,
                           cv_run: str, key: str) -> tuple[str, dict[str, float]]:
    """The final model's registry URI (models:/NAME/VERSION), trained unless a finished one exists, and the
    seconds this process spent training it."""
    final_run = tracker.child_run(cv_run, FINAL_ROLE, {}, name="final")
    if tracker.is_done(final_run):
        print("final: already trained, reused")
    spent = {}
    claims.once("final", lambda: tracker.is_done(final_run),
                lambda: spent.update(final_model=_train(config, data, storage, tracker, claims, cv_run, final_run,
                                                        key)))
    if not tracker.tag(final_run, REGISTERED_TAG).startswith(f"{config.model_name}/"):  # asked under another name
        version = register(tracker.client, config.model_name, final_run, tracker.read_text(cv_run, SUMMARY))
        tracker.set_tag(final_run, REGISTERED_TAG, f"{config.model_name}/{version}")
    uri, tracking_uri = f"models:/{tracker.tag(final_run, REGISTERED_TAG)}", config.stores.tracking_uri
    print(f"final model: {uri} (run {final_run}); use it with\n"
          f"  python -m experiments.predict --model {uri} --ct CT --roi ROI --out DIR"
          + ("" if tracking_uri.startswith("http") else f" --tracking-uri {masked(tracking_uri)}"))
    return uri, spent


def _train(config: RunConfig, data: FoldData, storage, tracker: Tracker, claims: Claims, cv_run: str, final_run: str,
           key: str) -> float:
    """Tune (with a budget) and train the final model on every patient, log and register it; returns the seconds
    its training took."""
    try:
        tracker.restart(final_run)
        patients = tuple(sorted(data.labels))
        study, unit = None, final_unit(config.protocol.folds)
        if config.tuning.trials:
            while (study := tune(config, unit, Split(train=patients, test=()), data, storage, tracker, final_run,
                                 key)) is None:  # trials of other processes still run
                claims.wait()
        params, epochs, best_value = chosen_settings(config.training, study)
        started = time.perf_counter()
        print(f"final: model on all {len(patients)} patients, {epochs} epoch(s)"
              + ("" if config.tuning.trials else " with the default settings (no tuning)"), flush=True)
        model, history = fit(config.model, config.training.patience, config.seed, params, data, patients, epochs,
                             seed=config.seed + unit.index,
                             callbacks=[epoch_lines("final", epochs)])
        seconds = time.perf_counter() - started
        for epoch, loss in enumerate(history["loss"]):
            tracker.metrics(final_run, {"train_loss": loss, "train_slice_auc": history["auc"][epoch]}, step=epoch)
        tracker.params(final_run, {f"best_{k}": v for k, v in params.as_dict().items()} | {"final_epochs": epochs})
        tracker.metrics(final_run, {"best_inner_val_patient_auc": best_value, "final_training_seconds": seconds})
        pooled = tracker.client.get_run(cv_run).data.metrics
        expected = {"patient_auc": pooled.get("patient_auc"),
                    "patient_auc_ci": [pooled.get("patient_auc_ci_low"), pooled.get("patient_auc_ci_high")],
                    "patient_sensitivity": pooled.get("patient_sensitivity"),
                    "patient_specificity": pooled.get("patient_specificity"),
                    "measured_on": f"pooled out-of-fold predictions of {config.protocol.folds}-fold CV, "
                                   f"{len(patients)} patients"}
        log_model(tracker, final_run, model,
                  contract(config, params, provenance(tracker, final_run, "final"), expected, epochs))
        log_cohort(tracker.client, final_run, Path(config.cohort), data.cohort_hash)
        description = tracker.read_text(cv_run, SUMMARY)
        version = register(tracker.client, config.model_name, final_run, description)
        tracker.set_tag(final_run, REGISTERED_TAG, f"{config.model_name}/{version}")
        tracker.finish(final_run)
        return seconds
    except BaseException as error:
        tracker.fail(final_run, error)
        raise
