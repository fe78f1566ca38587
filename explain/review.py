"""`python -m explain.review --run-id RUN`: where each fold model looked, for radiologists.

For every test patient of every finished fold, the slices with the highest
probability are explained with each method: overlays on the crop and on the whole
axial slice of the evidence for the call and for the other class, attention against the
cohort's feature masks, which of the three slices drove the call, a randomisation sanity
check of each method and its faithfulness (deletion and insertion). Everything is
written under --out (explain/ and review/, as in the run's artifact tree) and logged
to the CV run, so the MLflow UI lists review/index.html with its images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from explain.methods import DEFAULT_LAYER, METHODS
from explain.run_review import DEFAULT_METHODS, review
from explain.runs import default_tracking_uri
from vfrac.errors import InputError
from vfrac.runtime import apply_process_defaults


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m explain.review", description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True, help="the CV run (tag vfrac.role = cv)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/)")
    parser.add_argument("--method", action="append", choices=METHODS,
                        help=f"map method, repeatable (default: {' and '.join(DEFAULT_METHODS)})")
    parser.add_argument("--layer", help=f"target layer (default: the run's cam_layer, else {DEFAULT_LAYER}); "
                        "conv4_block6_out gives finer maps")
    parser.add_argument("--top-slices", type=int, default=3, help="slices explained per patient")
    parser.add_argument("--out", type=Path, help="folder for the files (default: a temporary one)")
    parser.add_argument("--dicom", action="store_true", help="also write each patient's overlays as a DICOM "
                        "Secondary Capture series and each method's maps as a DICOM Parametric Map")
    parser.add_argument("--no-log", action="store_true", help="write files only (needs --out); log nothing to MLflow")
    args = parser.parse_args(argv)
    if args.no_log and args.out is None:
        parser.error("--no-log needs --out: without it nothing would be kept")
    return args


def main(argv=None) -> int:
    apply_process_defaults()
    args = parse_args(argv)
    tracking = args.tracking_uri or default_tracking_uri()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            out = args.out or Path(scratch)
            page = review(args.run_id, tracking, tuple(args.method or DEFAULT_METHODS), args.layer,
                          args.top_slices, out, dicom=args.dicom, log=not args.no_log)
            if args.out:
                print(f"review page: {page}")
    except InputError as error:  # a bug keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
