"""`python -m experiments.cv`: patient-level k-fold CV with nested Optuna tuning, tracked in MLflow.

With no arguments it runs the demo: the synthetic cohort in data/demo/ (written if
absent) with the small `demo` preset. Rerunning the same command resumes the same CV
run: finished folds and trials are reused. Several processes or machines sharing
`--storage` and the tracking store split the work: each trial, fold model, pooled
result, review and report is done once, by whichever process claims it first
(experiments.claims); `--fold K` keeps a process to one outer fold.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from experiments.config import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MODEL_NAME, DEFAULT_STORE_TIMEOUT, PRESETS, resolve
from experiments.tuning import PRUNERS
from vfrac.errors import InputError
from vfrac.prepare import add_crop_arguments
from vfrac.runtime import apply_process_defaults
from vfrac.stats.metrics import AGGREGATIONS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.cv", description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, help="manifest.csv (default for the demo: data/demo/manifest.csv)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--folds", type=int, help="outer folds")
    parser.add_argument("--trials", type=int, help="Optuna trials per fold; 0: no tuning, the default settings")
    parser.add_argument("--epochs", type=int, help="most epochs per trial")
    parser.add_argument("--input-size", type=int, help="network input, pixels square")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inner-folds", type=int, default=1,
                        help="inner validation of each trial: 1 = one stratified 80/20 split, k >= 2 = k-fold "
                             "(scores averaged; k times the training) (default: %(default)s)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median",
                        help="Optuna pruner that stops weak trials early (default: %(default)s)")
    parser.add_argument("--aggregation", choices=AGGREGATIONS,
                        help="slices -> patient: max (the study), mean, or topk (mean of the 3 highest) "
                             "(default: the preset's)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="patient (and slice) probability at or above which the call is malignant "
                             "(default: %(default)s)")
    add_crop_arguments(parser)  # --margin, --box-mode, --context, --cache-size, --min-area, as vfrac.prepare
    parser.add_argument("--allow-outside", action="store_true",
                        help="accept manifest paths that lead outside the manifest's folder (refused by default)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out bad manifest rows and patients whose files cannot be prepared (listed on "
                             "the console, in the run's excluded.csv and the report's participant flow) instead of "
                             "stopping at the first")
    parser.add_argument("--experiment", default="vfrac", help="MLflow experiment name")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/)")
    parser.add_argument("--storage", help="Optuna RDB URL, e.g. postgresql://USER@HOST/DB with the password in "
                                           "~/.pgpass or $PGPASSWORD (default: $VFRAC_STORAGE or sqlite in mlruns/)")
    parser.add_argument("--fold", type=int, help="run this outer fold only (a job array's task; a later run "
                                                 "without --fold pools the folds)")
    parser.add_argument("--heartbeat-timeout", type=float, default=DEFAULT_HEARTBEAT_TIMEOUT, metavar="SECONDS",
                        help="a worker on another machine whose heartbeats stop for this long is taken for dead and "
                             "its trial or fold is done again by another (default: %(default)g)")
    parser.add_argument("--store-timeout", type=float, default=DEFAULT_STORE_TIMEOUT, metavar="SECONDS",
                        help="how long to retry the Optuna storage or the MLflow tracking store when it stops "
                             "answering before stopping with exit code 75; a rerun continues (default: %(default)g)")
    parser.add_argument("--weights", help="'imagenet' (downloads) or a ResNet50 weights file; default: none")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="compute type of training and prediction; bfloat16 pays on GPUs and CPUs with AMX "
                             "(default: %(default)s)")
    parser.add_argument("--arch", choices=("resnet50", "resnet-tiny"), default="resnet50",
                        help="resnet-tiny: ResNet50's stages and layer names at a fraction of its size and tracing "
                             "time, to check a cohort and the whole flow quickly, not for results "
                             "(default: %(default)s)")
    parser.add_argument("--conv-gradient", choices=("auto", "fast", "stock"), default="auto",
                        help="the convolutions' input gradient in training: 'fast' computes it as a forward "
                             "convolution (TensorFlow only; it pays on CPUs), 'stock' is TensorFlow's own; "
                             "auto: fast on a CPU, stock on a GPU. The run's param conv_gradient_active says which "
                             "ran (default: %(default)s)")
    parser.add_argument("--no-explain", action="store_true", help="skip the Grad-CAM review at the end")
    parser.add_argument("--final", action="store_true",
                        help="once the CV is done, also train the model to use on every patient with the same "
                             "protocol, and register it in the MLflow Model Registry")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                        help="registry name of the --final model (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    apply_process_defaults()  # before anything loads TensorFlow
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        config = resolve(args)
        # MLflow and Optuna load now, TensorFlow once both stores answer (a wrong address fails in seconds); the
        # cache's worker processes re-import this module and need none of them.
        from experiments.runner import run
        from experiments.tracking import open_stores

        stores = open_stores(config)
        return run(config, *stores)
    except (InputError, FileExistsError) as error:  # a bug's ValueError keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished folds and trials are kept; run the same command again to continue",
              file=sys.stderr)
        return 130


def _interrupt(signum, frame):
    """SIGTERM (a scheduler's stop, `kill`) ends the run as Ctrl-C does: its runs marked KILLED."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
