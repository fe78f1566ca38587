"""`python -m experiments.predict`: a vfrac model applied to one new patient's CT.

Flags and exit codes only; the work is `experiments.prediction.predict`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from experiments.model_flags import add_model_arguments, add_rule_arguments, uncertainty_rule
from explain.methods import METHODS as MAP_METHODS
from vfrac.cohort import PATIENT_ID
from vfrac.errors import InputError
from vfrac.runtime import apply_process_defaults
from vfrac.stats.ensemble import METHODS

DEFAULT_METHODS = ("gradcam",)
UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def uid(value: str) -> str:
    """A DICOM UID: digits in dot-separated groups, at most 64 characters."""
    if len(value) > 64 or not UID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a DICOM UID (digits and dots, at most 64)")
    return value


def parse_args(argv=None) -> argparse.Namespace:

    def patient_id(value: str) -> str:
        if not PATIENT_ID.fullmatch(value):
            raise argparse.ArgumentTypeError(f"{value!r}: letters, digits, '.', '_' or '-', up to 64")
        return value

    parser = argparse.ArgumentParser(prog="python -m experiments.predict", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ct", type=Path, help="the CT: a DICOM series folder or a NIfTI file")
    source.add_argument("--dicomweb", metavar="URL",
                        help="a PACS's DICOMweb root (e.g. https://pacs.example.org/dicom-web): the CT series of "
                             "--study is fetched from it (QIDO-RS, WADO-RS); login from $VFRAC_DICOMWEB_USER and "
                             "$VFRAC_DICOMWEB_PASSWORD or --dicomweb-credentials")
    parser.add_argument("--study", type=uid, help="with --dicomweb: the Study Instance UID")
    parser.add_argument("--series", type=uid, help="with --dicomweb: the CT series, when the study holds several")
    parser.add_argument("--dicomweb-credentials", type=Path, metavar="FILE",
                        help="a file holding one line user:password, readable by its owner only")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--roi", type=Path,
                       help="mask of the vertebra to classify: NIfTI, NRRD (3D Slicer's .seg.nrrd), DICOM SEG or "
                            "RTSTRUCT (.dcm; --roi-label picks the segment or ROI number), or .npy")
    where.add_argument("--segmentation", type=Path,
                       help="TotalSegmentator (v2) output: its multi-label map (total-task ids, 31 = L1) or its "
                            "folder of per-structure masks (vertebrae_L1.nii.gz); needs --vertebra")
    where.add_argument("--seg-series", type=uid, metavar="UID",
                       help="with --dicomweb: a DICOM SEG series of the same study holding the ROI (--roi-label "
                            "picks its segment)")
    parser.add_argument("--roi-label", type=int, help="voxel value of the vertebra in a multi-label --roi (the "
                        "segment number of a DICOM SEG, the ROI number of an RTSTRUCT)")
    parser.add_argument("--vertebra", help="the level to classify in --segmentation, e.g. L1")
    parser.add_argument("--patient-id", type=patient_id, default="VF-NEW",
                        help="pseudonymous id shown in the outputs (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="folder for the outputs (default: predictions/PATIENT_ID); "
                        "one that is not empty is refused unless --force")
    parser.add_argument("--force", action="store_true",
                        help="replace the outputs of an earlier prediction in --out (its files of other patients "
                             "would otherwise mix with this one's)")
    parser.add_argument("--dicom", action="store_true", help="also write the overlays as a DICOM Secondary Capture "
                        "and each method's maps as a DICOM Parametric Map (dicom/maps/METHOD.dcm): "
                        "--dicom-output pseudonymous")
    parser.add_argument("--dicom-output", choices=("pseudonymous", "study"),
                        help="the DICOM outputs' identity: pseudonymous (a new study named by --patient-id, for "
                             "research stores) or study (new series of the CT's own study, with its patient, "
                             "referencing its images: for the hospital's PACS; needs a DICOM CT)")
    parser.add_argument("--send", action="store_true",
                        help="with --dicomweb and --dicom-output study: store the DICOM outputs in the PACS "
                             "(STOW-RS)")
    parser.add_argument("--method", action="append", choices=MAP_METHODS,
                        help=f"map method, repeatable (default: {' and '.join(DEFAULT_METHODS)})")
    parser.add_argument("--recalibrate", choices=METHODS,
                        help="also report the risk recalibrated (Platt or isotonic) on the CV run's out-of-fold "
                             "patient predictions (fitted once, stored on that run); the call keeps the model's "
                             "threshold")
    add_rule_arguments(parser)
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or mlruns/)")
    args = parser.parse_args(argv)
    args.rule = uncertainty_rule(args, parser)
    args.method = args.method or list(DEFAULT_METHODS)
    if args.segmentation and not args.vertebra:
        parser.error("--segmentation needs --vertebra (the level to classify, e.g. L1)")
    if args.vertebra and not args.segmentation:
        parser.error("--vertebra picks a level in --segmentation; with --roi use --roi-label")
    if args.roi_label is not None and (args.segmentation or args.roi_label < 1):
        parser.error("--roi-label goes with --roi or --seg-series and must be >= 1")
    if args.dicomweb and not args.study:
        parser.error("--dicomweb needs --study (the Study Instance UID)")
    pacs_only = [flag for flag, value in (("--study", args.study), ("--series", args.series),
                                          ("--seg-series", args.seg_series),
                                          ("--dicomweb-credentials", args.dicomweb_credentials)) if value]
    args.dicom_output = args.dicom_output or ("pseudonymous" if args.dicom else None)
    args.dicom = args.dicom_output is not None
    if args.send and not (args.dicomweb and args.dicom_output == "study"):
        parser.error("--send stores the outputs filed with the CT's study: it needs --dicomweb and "
                     "--dicom-output study (pseudonymous objects do not belong in the hospital's PACS)")
    if pacs_only and not args.dicomweb:
        parser.error(f"{', '.join(pacs_only)} go(es) with --dicomweb")
    return args


def main(argv=None) -> int:
    apply_process_defaults()  # before anything loads TensorFlow
    args = parse_args(argv)
    from experiments.prediction import predict, verdict_line  # here: --help and bad flags need none of it

    try:
        prediction = predict(args)
    except InputError as error:  # a bug keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(", ".join(f"{name} {seconds:.1f} s" for name, seconds in prediction["seconds"].items()))
    print(f"written: {prediction['files']['prediction']}, {prediction['files']['sheet']}")
    print(verdict_line(prediction))
    return 0


if __name__ == "__main__":
    sys.exit(main())
