"""`python -m experiments.report --run-id RUN`: the study's tables, regenerated from a CV run.

Reads the run's predictions, metrics and config, and the cohort's manifest for the
visual features and the readers; writes report/report.md and report/report.html
(with its ROC and calibration plots beside it) and logs them to the CV run.
`experiments.cv` writes it at its end. Only the manifest's patient_id appears.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from experiments.study_report import write_report
from explain.runs import default_tracking_uri
from vfrac.errors import InputError
from vfrac.runtime import apply_process_defaults


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True, help="the CV run (tag vfrac.role = cv)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/)")
    parser.add_argument("--out", type=Path, help="also keep the files in this folder")
    parser.add_argument("--no-log", action="store_true", help="write files only (needs --out); log nothing to MLflow")
    args = parser.parse_args(argv)
    if args.no_log and args.out is None:
        parser.error("--no-log needs --out: without it nothing would be kept")
    return args


def main(argv=None) -> int:
    apply_process_defaults()  # before anything loads TensorFlow
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            page = write_report(args.run_id, args.tracking_uri or default_tracking_uri(), args.out or Path(scratch),
                                log=not args.no_log)
            print(f"report: {page if args.out else 'report/report.md and report/report.html in the CV run'}")
    except InputError as error:  # a bug keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
