"""The resolved configuration of one cross-validation run: presets, then flags on top.

One frozen, flat dataclass, logged whole (params and config.json) and hashed into the
run key that lets a rerun, or another process, find the same CV run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from explain.runs import DEFAULT_STORE, default_tracking_uri, masked
from vfrac.data.cache import CropSettings
from vfrac.errors import InputError
from vfrac.prepare import crop_settings

DEMO_COHORT = Path("data/demo/manifest.csv")
DEFAULT_HEARTBEAT_TIMEOUT = 120  # s without a heartbeat after which another machine's claim is dead
DEFAULT_STORE_TIMEOUT = 120  # s a store that stopped answering is retried before the run stops
DEFAULT_MODEL_NAME = "vfrac-resnet50"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # it becomes part of models:/NAME/VERSION
PRESETS = {
    # Learns on 2 CPU cores in about 10 minutes, explanation included: no tuning (an inner
    # validation split of a few patients ranks settings by noise), the default settings
    # trained for a fixed number of epochs with a decaying learning rate and averaged weights.
    # 8 epochs: on three new cohort seeds mean-rule AUC 0.920-0.944 (10 epochs: 0.929-0.981 on three
    # others, 25 % more time; README), so the command fits its 600 s on a 2-core CPU.
    # Pre-specified rule: the mean of the slices, which ranked patients better than the
    # study's max on every cohort seed measured (bench/bench_learning.py, README) and whose
    # 0.5 threshold is not pushed up by the highest of a dozen slices.
    "demo": dict(folds=2, trials=0, epochs=8, input_size=64, patience=3, batch_size=16, n_boot=300,
                 aggregation="mean", cam_layer="conv2_block3_out"),  # 16 x 16 maps at 64 (README: why)
    # The study's protocol, with a real tuning budget, for a GPU machine.
    "paper": dict(folds=10, trials=30, epochs=60, input_size=224, patience=10, batch_size=32, n_boot=2000,
                  aggregation="max", cam_layer="conv5_block3_out"),
}
# Fields that say where or how a run executes, or what it adds after the CV, not what the CV computes: not in
# the run key. (skip_bad: the patients it leaves out change the cohort hash.)
NOT_IN_KEY = ("fold", "explain", "cam_layer", "tracking_uri", "storage", "experiment", "workers", "cache_dir",
              "allow_outside", "skip_bad", "final", "model_name", "heartbeat_timeout", "store_timeout",
              "conv_gradient")


@dataclass(frozen=True)
class RunConfig:
    preset: str
    cohort: str
    folds: int
    trials: int
    epochs: int
    input_size: int
    seed: int
    experiment: str
    tracking_uri: str
    storage: str
    fold: int | None
    explain: bool
    patience: int
    batch_size: int  # for the final model; trials tune their own
    n_boot: int
    min_area: float = CropSettings.min_area  # slice rule, see vfrac.data.crops.lesion_slices
    margin: float = CropSettings.margin  # the crop settings (vfrac.data.cache.CropSettings), as vfrac.prepare's flags
    box_mode: str = CropSettings.box_mode
    context: float = CropSettings.context
    cache_size: int = CropSettings.cache_size
    ema_momentum: float = 0.98  # weight averaging of every fit
    inner_folds: int = 1  # 1: one stratified 80/20 inner validation split
    threshold: float = 0.5
    aggregation: str = "max"
    weights: str | None = None  # None, "imagenet" or a weights file
    precision: str = "float32"  # or "bfloat16" (vfrac.model.network.PRECISIONS)
    arch: str = "resnet50"  # or "resnet-tiny" (vfrac.model.network.ARCHITECTURES)
    conv_gradient: str = "auto"  # the convolutions' input gradient: "auto", "fast" or "stock" (float rounding only)
    pruner: str = "median"
    cam_layer: str = "conv5_block3_out"  # the layer the review's maps are taken at
    cache_dir: str = "data/cache"
    workers: int = 2
    allow_outside: bool = False  # manifest paths may lead outside its folder (vfrac.cohort.read_manifest)
    skip_bad: bool = False  # leave out bad rows and patients (listed in the run's excluded.csv) instead of stopping
    final: bool = False  # also train, log and register the model to use (experiments.final)
    model_name: str = DEFAULT_MODEL_NAME  # its name in the MLflow Model Registry
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT  # s without a heartbeat before another machine's work is free
    store_timeout: float = DEFAULT_STORE_TIMEOUT  # s a store that stopped answering is retried before the run stops

    def key(self, cohort_hash: str) -> str:
        """What identifies this run's results: the settings that change them, and the cohort."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_IN_KEY}
        text = json.dumps([fields, cohort_hash], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def crop_settings(self) -> CropSettings:
        return CropSettings.from_values(dataclasses.asdict(self))

    def as_params(self) -> dict[str, str]:
        """Every field as text, for MLflow params and config.json: store URLs without their password."""
        values = dataclasses.asdict(self) | {"tracking_uri": masked(self.tracking_uri), "storage": masked(self.storage)}
        return {k: str(v) for k, v in values.items()}


def resolve(args) -> RunConfig:
    """Preset values, overridden by every flag the user gave."""
    preset = PRESETS[args.preset]
    store = DEFAULT_STORE.resolve()

    def pick(name):
        value = getattr(args, name, None)
        return preset[name] if value is None else value

    tracking = args.tracking_uri or default_tracking_uri()
    storage = args.storage or os.environ.get("VFRAC_STORAGE") or f"sqlite:///{store / 'optuna.db'}"
    if not (args.tracking_uri and args.storage):
        store.mkdir(exist_ok=True)  # the default stores' folder
    cohort = args.cohort or (DEMO_COHORT if args.preset == "demo" else None)
    if cohort is None:
        raise InputError("--cohort is required with --preset paper")
    config = RunConfig(
        preset=args.preset, cohort=str(Path(cohort).resolve()), folds=pick("folds"), trials=pick("trials"),
        epochs=pick("epochs"), input_size=pick("input_size"), seed=args.seed, experiment=args.experiment,
        tracking_uri=tracking, storage=storage, fold=args.fold, explain=not args.no_explain,
        patience=preset["patience"], batch_size=preset["batch_size"], n_boot=preset["n_boot"],
        weights=args.weights, precision=args.precision, arch=args.arch, conv_gradient=args.conv_gradient,
        cam_layer=preset["cam_layer"],
        aggregation=args.aggregation or preset["aggregation"], threshold=args.threshold,
        inner_folds=args.inner_folds, pruner=args.pruner,
        **dataclasses.asdict(crop_settings(args)),
        allow_outside=args.allow_outside, skip_bad=args.skip_bad, final=args.final, model_name=args.model_name,
        heartbeat_timeout=args.heartbeat_timeout, store_timeout=args.store_timeout,
    )
    _check(config)
    return config


def _check(config: RunConfig) -> None:
    if config.folds < 2:
        raise InputError(f"--folds must be >= 2, received {config.folds}")
    if config.trials < 0 or config.epochs < 1:
        raise InputError(f"--trials must be >= 0 and --epochs >= 1, received {config.trials}, {config.epochs}")
    if config.inner_folds < 1:
        raise InputError(f"--inner-folds must be >= 1, received {config.inner_folds}")
    if not 0.0 < config.threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1, received {config.threshold}")
    if config.input_size < 32:
        raise InputError(f"--input-size must be >= 32, received {config.input_size}")
    if config.arch != "resnet50" and config.weights == "imagenet":
        raise InputError(f"--weights imagenet exists for --arch resnet50 only, received --arch {config.arch}")
    if not MODEL_NAME.fullmatch(config.model_name):
        raise InputError(f"--model-name must be letters, digits, '.', '_' or '-', received {config.model_name!r}")
    if config.heartbeat_timeout < 4 or config.store_timeout < 0:
        raise InputError(f"--heartbeat-timeout must be >= 4 s and --store-timeout >= 0 s, received "
                         f"{config.heartbeat_timeout:g}, {config.store_timeout:g}")
    if config.fold is not None and not 0 <= config.fold < config.folds:
        raise InputError(f"--fold must be in 0..{config.folds - 1}, received {config.fold}")
