"""`python -m experiments.validate`: a vfrac model (registered, a fold's, or a fold ensemble) on another site's cohort.

Flags and exit codes only; the work is `experiments.validation.validate`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from experiments.model_flags import add_model_arguments, add_rule_arguments, uncertainty_rule
from vfrac.errors import InputError
from vfrac.runtime import apply_process_defaults


def parse_args(argv=None) -> argparse.Namespace:

    parser = argparse.ArgumentParser(prog="python -m experiments.validate", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--cohort", required=True, type=Path, help="the other cohort's manifest.csv")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out bad manifest rows and patients whose files cannot be read (listed on the "
                             "console, in the run's excluded.csv and its report) instead of stopping at the first")
    parser.add_argument("--allow-outside", action="store_true",
                        help="accept manifest paths that lead outside the manifest's folder (refused by default)")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"),
                        help="where the cohort's crops are prepared (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes that prepare the crops (default: %(default)s)")
    parser.add_argument("--experiment", help="MLflow experiment of the validation run (default: the model's)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/)")
    parser.add_argument("--out", type=Path, help="also keep the report, tables and plots in this folder")
    add_rule_arguments(parser)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    args.rule = uncertainty_rule(args, parser)
    return args


def main(argv=None) -> int:
    apply_process_defaults()  # before anything loads TensorFlow
    args = parse_args(argv)
    # Here, not at the top: the crops' spawned worker processes re-import this module and need none of it.
    from experiments.validation import validate

    try:
        outcome = validate(args)
    except InputError as error:  # a bug keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(outcome["table"])
    if args.out:
        print(f"report: {Path(args.out) / 'report' / 'report.md'}")
    for line in outcome["browse"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
