"""The resolved configuration of one cross-validation run: presets, then flags on top.

Frozen dataclasses, one per stage (crops, model, training, tuning, protocol, stores), in
one `RunConfig`; each stage's code takes its part. The run is logged and keyed by every
setting under its own name (`RunConfig.flat`: params, config.json and the run key that
lets a rerun, or another process, find the same CV run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from explain.runs import DEFAULT_STORE, default_storage, default_tracking_uri, masked
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
    # others, 25 % more time; docs/benchmarks.md).
    # Pre-specified rule: the mean of the slices, which ranked patients better than the
    # study's max on every cohort seed measured (bench/bench_learning.py) and whose
    # 0.5 threshold is not pushed up by the highest of a dozen slices.
    "demo": dict(folds=2, trials=0, epochs=8, input_size=64, patience=3, batch_size=16, n_boot=300,
                 aggregation="mean", cam_layer="conv2_block3_out"),  # 16 x 16 maps at 64 (docs/review.md)
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
class ModelSettings:
    """The network and what its compiled graph bakes in."""

    input_size: int
    weights: str | None = None  # None, "imagenet" or a weights file
    precision: str = "float32"  # or "bfloat16" (vfrac.model.network.PRECISIONS)
    arch: str = "resnet50"  # or "resnet-tiny" (vfrac.model.network.ARCHITECTURES)
    conv_gradient: str = "auto"  # the convolutions' input gradient: "auto", "fast" or "stock" (float rounding only)
    ema_momentum: float = 0.98  # weight averaging of every fit


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int  # of a trial; the final model of a fold trains its trials' best epoch count
    patience: int  # epochs without a better smoothed validation AUC before a trial stops
    batch_size: int  # for the final model; trials tune their own


@dataclass(frozen=True)
class TuningSettings:
    trials: int  # Optuna trials per fold; 0: the default settings
    inner_folds: int = 1  # 1: one stratified 80/20 inner validation split
    pruner: str = "median"


@dataclass(frozen=True)
class ProtocolSettings:
    """The study's protocol: outer folds, the pre-specified patient rule and threshold, the CIs."""

    folds: int
    n_boot: int
    threshold: float = 0.5
    aggregation: str = "max"


@dataclass(frozen=True)
class StoreSettings:
    tracking_uri: str
    storage: str
    experiment: str
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT  # s without a heartbeat before another machine's work is free
    store_timeout: float = DEFAULT_STORE_TIMEOUT  # s a store that stopped answering is retried before the run stops


GROUPS = ("crops", "model", "training", "tuning", "protocol", "stores")


@dataclass(frozen=True)
class RunConfig:
    preset: str
    cohort: str
    seed: int
    crops: CropSettings
    model: ModelSettings
    training: TrainingSettings
    tuning: TuningSettings
    protocol: ProtocolSettings
    stores: StoreSettings
    fold: int | None = None  # this process's outer fold only (a job array's task)
    explain: bool = True
    cam_layer: str = "conv5_block3_out"  # the layer the review's maps are taken at
    cache_dir: str = "data/cache"
    workers: int = 2
    allow_outside: bool = False  # manifest paths may lead outside its folder (vfrac.cohort.read_manifest)
    skip_bad: bool = False  # leave out bad rows and patients (listed in the run's excluded.csv) instead of stopping
    final: bool = False  # also train, log and register the model to use (experiments.final)
    model_name: str = DEFAULT_MODEL_NAME  # its name in the MLflow Model Registry

    def flat(self) -> dict:
        """Every setting under its own name: the run's own and each stage's (their names do not repeat)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in GROUPS}
        for group in GROUPS:
            values |= dataclasses.asdict(getattr(self, group))
        return values

    def key(self, cohort_hash: str) -> str:
        """What identifies this run's results: the settings that change them, and the cohort."""
        fields = {k: v for k, v in self.flat().items() if k not in NOT_IN_KEY}
        text = json.dumps([fields, cohort_hash], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_params(self) -> dict[str, str]:
        """Every setting as text, for MLflow params and config.json: store URLs without their password."""
        stores = self.stores
        values = self.flat() | {"tracking_uri": masked(stores.tracking_uri), "storage": masked(stores.storage)}
        return {k: str(v) for k, v in values.items()}


def resolve(args) -> RunConfig:
    """Preset values, overridden by every flag the user gave."""
    preset = PRESETS[args.preset]
    store = DEFAULT_STORE.resolve()

    def pick(name):
        value = getattr(args, name, None)
        return preset[name] if value is None else value

    tracking = args.tracking_uri or default_tracking_uri()
    storage = args.storage or default_storage()
    if not (args.tracking_uri and args.storage):
        store.mkdir(exist_ok=True)  # the default stores' folder
    cohort = args.cohort or (DEMO_COHORT if args.preset == "demo" else None)
    if cohort is None:
        raise InputError(f"--cohort is required with --preset {args.preset}")
    config = RunConfig(
        preset=args.preset, cohort=str(Path(cohort).resolve()), seed=args.seed,
        crops=crop_settings(args),
        model=ModelSettings(input_size=pick("input_size"), weights=args.weights, precision=args.precision,
                            arch=args.arch, conv_gradient=args.conv_gradient),
        training=TrainingSettings(epochs=pick("epochs"), patience=preset["patience"], batch_size=preset["batch_size"]),
        tuning=TuningSettings(trials=pick("trials"), inner_folds=args.inner_folds, pruner=args.pruner),
        protocol=ProtocolSettings(folds=pick("folds"), n_boot=preset["n_boot"], threshold=args.threshold,
                                  aggregation=args.aggregation or preset["aggregation"]),
        stores=StoreSettings(tracking_uri=tracking, storage=storage, experiment=args.experiment,
                             heartbeat_timeout=args.heartbeat_timeout, store_timeout=args.store_timeout),
        fold=args.fold, explain=not args.no_explain, cam_layer=cam_layer_of(preset["cam_layer"], args.arch),
        allow_outside=args.allow_outside,
        skip_bad=args.skip_bad, final=args.final, model_name=args.model_name,
    )
    _check(config)
    return config


def cam_layer_of(layer: str, arch: str) -> str:
    """The preset's Grad-CAM layer in the network that runs: resnet-tiny has one block in conv3 to conv5
    (vfrac.model.network.TINY_BLOCKS), so the last block of those stages is block1."""
    stage = re.fullmatch(r"conv([3-5])_block\d+_out", layer)
    return f"conv{stage.group(1)}_block1_out" if arch == "resnet-tiny" and stage else layer


def _check(config: RunConfig) -> None:
    if config.protocol.folds < 2:
        raise InputError(f"--folds must be >= 2, received {config.protocol.folds}")
    if config.tuning.trials < 0 or config.training.epochs < 1:
        raise InputError(f"--trials must be >= 0 and --epochs >= 1, received {config.tuning.trials}, "
                         f"{config.training.epochs}")
    if config.tuning.inner_folds < 1:
        raise InputError(f"--inner-folds must be >= 1, received {config.tuning.inner_folds}")
    if not 0.0 < config.protocol.threshold < 1.0:
        raise InputError(f"--threshold must be between 0 and 1, received {config.protocol.threshold}")
    if config.model.input_size < 32:
        raise InputError(f"--input-size must be >= 32, received {config.model.input_size}")
    if config.model.arch != "resnet50" and config.model.weights == "imagenet":
        raise InputError(f"--weights imagenet exists for --arch resnet50 only, received --arch {config.model.arch}")
    if not MODEL_NAME.fullmatch(config.model_name):
        raise InputError(f"--model-name must be letters, digits, '.', '_' or '-', received {config.model_name!r}")
    if config.stores.heartbeat_timeout < 4 or config.stores.store_timeout < 0:
        raise InputError(f"--heartbeat-timeout must be >= 4 s and --store-timeout >= 0 s, received "
                         f"{config.stores.heartbeat_timeout:g}, {config.stores.store_timeout:g}")
    if config.fold is not None and not 0 <= config.fold < config.protocol.folds:
        raise InputError(f"--fold must be in 0..{config.protocol.folds - 1}, received {config.fold}")
