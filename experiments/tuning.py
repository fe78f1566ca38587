"""The Optuna side of a fold: search space, storage, study, pruner, and how many trials remain.

The search space lives here, at the edge (`suggest(trial) -> TrialParams`); the model and the
pipeline only ever see plain arguments. Trials are claimed through `claim_trial`, so
the budget holds across processes, and a trial whose process died is failed
(experiments.claims) and re-run with its own settings and seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import optuna
from optuna.trial import TrialState

from experiments.claims import new_trial
from vfrac.data.window import BONE_WINDOW
from vfrac.run_tree import TRIAL_TAG

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
PRUNERS = ("median", "hyperband")  # --pruner: stop a trial below the median so far, or successive halving
POSITION_ATTR = TRIAL_TAG  # the trial's place in its fold's sequence: an Optuna attribute and an MLflow tag


@dataclass(frozen=True)
class TrialParams:
    """The settings one model trains with: a point of the search space.

    The defaults are every fold's first trial and the demo's only settings. Measured
    (before zero-gamma) on one fold of a synthetic cohort (60 training patients, 12
    epochs, 64 px): a peak rate of 2e-3 with batches of 16 and half-strength augmentation
    reached patient AUC 0.86-0.90, against 0.62-0.70 at 3e-4 (batches of 32) and
    0.69-0.85 at 1e-3 with full augmentation.
    """

    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.3
    batch_size: int = 16
    augment_strength: float = 0.5
    window_level: float = BONE_WINDOW[0]
    window_width: float = BONE_WINDOW[1]
    freeze_stages: int = 0  # searched only with pretrained weights

    @classmethod
    def from_values(cls, values: dict) -> TrialParams:
        """From Optuna's params of a trial (freeze_stages is absent without pretrained weights)."""
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    @property
    def window(self) -> tuple[float, float]:
        return self.window_level, self.window_width

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULTS = TrialParams()
# What a trial draws without pretrained weights (freeze_stages is then fixed at 0).
SEARCHED = tuple(f.name for f in fields(TrialParams) if f.name != "freeze_stages")


# The search space as the report states it (suggest() draws from exactly these).
SEARCH_SPACE = {"learning_rate": "1e-5 to 3e-3, log", "weight_decay": "1e-6 to 1e-2, log", "dropout": "0 to 0.5",
                "batch_size": "16 or 32", "augment_strength": "0 to 1.5", "window_level": "100 to 700 HU",
                "window_width": "600 to 2500 HU", "freeze_stages": "0 to 3 (pretrained weights only)"}


def suggest(trial: optuna.Trial, pretrained: bool) -> TrialParams:
    """One point of the search space."""
    return TrialParams(
        learning_rate=trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        dropout=trial.suggest_float("dropout", 0.0, 0.5),
        batch_size=trial.suggest_categorical("batch_size", [16, 32]),
        augment_strength=trial.suggest_float("augment_strength", 0.0, 1.5),
        window_level=trial.suggest_float("window_level", 100.0, 700.0),
        window_width=trial.suggest_float("window_width", 600.0, 2500.0),
        freeze_stages=trial.suggest_int("freeze_stages", 0, 3) if pretrained else 0,
    )


def fold_study(storage, name: str, pruner: str) -> optuna.Study:
    """The fold's study, created once and shared by every process that works on the fold."""
    if pruner not in PRUNERS:
        raise ValueError(f"pruner must be one of {PRUNERS}, received {pruner!r}")
    chosen = (optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1) if pruner == "median"
              else optuna.pruners.HyperbandPruner(min_resource=1))
    return optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True,
                               pruner=chosen)


class Claimed(NamedTuple):
    trial: optuna.Trial
    trial_id: int  # the storage's id, for its heartbeats
    position: int  # its place in the fold's sequence of trials


def claim_trial(storage, study: optuna.Study, budget: int, seed: int) -> Claimed | None:
    """This process's next trial and its position in the fold's sequence; None once the budget is claimed.

    Live trials (running or done, in any process) count against the budget. A trial's
    settings depend only on its position and the trials done before it: position 0 is
    DEFAULTS, the others are drawn by a sampler seeded with `seed + position`. So a trial
    killed with its process is re-run, under a new number, with the same settings.
    """
    if len(_live(study)) >= budget:
        return None
    trial_id, frozen = new_trial(storage, study, {})
    position = sum(t.number < frozen.number for t in _live(study))
    if position >= budget:  # another process claimed the last one first
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        return None
    storage.set_trial_user_attr(trial_id, POSITION_ATTR, position)
    if position == 0:
        storage.set_trial_system_attr(trial_id, "fixed_params", DEFAULTS.as_dict())
    study.sampler = optuna.samplers.TPESampler(seed=seed + position)
    return Claimed(optuna.trial.Trial(study, trial_id), trial_id, position)


def remaining(study: optuna.Study, budget: int) -> int:
    return max(0, budget - len(_live(study)))


def others_running(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _live(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=DONE + (TrialState.RUNNING,))


def pruning_summary(study: optuna.Study, epochs: int) -> dict[str, int]:
    """Trials pruned and epochs not trained thanks to pruning."""
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    saved = sum(max(0, epochs - len(t.intermediate_values)) for t in pruned)
    return {"trials_pruned": len(pruned), "epochs_saved": saved}
