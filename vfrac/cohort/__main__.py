"""`python -m vfrac.cohort import --layout totalsegmentator|verse DIR --labels labels.csv`: a manifest for
a folder of CTs already segmented by TotalSegmentator or VerSe (vfrac.io.layouts)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vfrac.errors import InputError
from vfrac.io import layouts
from vfrac.io.layouts import LAYOUTS

SHOWN = 10  # left-out ids listed by name on the console


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vfrac.cohort", description="Cohort manifests.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "import", description="Write a manifest for a folder of CTs already segmented by TotalSegmentator or "
        "VerSe, pointing at those segmentations (nothing is copied). Labelled patients without a usable CT or "
        "level stop the import with every problem listed; CTs without a row are left out with a warning.")
    command.add_argument("--layout", required=True, choices=sorted(LAYOUTS),
                         help="totalsegmentator: DIR/<patient_id>/ct.nii.gz (or ct.nii or a DICOM folder ct/) "
                              "with DIR/<patient_id>/segmentations/ (per-structure masks) or segmentations.nii.gz "
                              "(--ml); verse: DIR/rawdata/sub-<patient_id>/<name>_ct.nii.gz with "
                              "DIR/derivatives/sub-<patient_id>/<name>_seg-vert_msk.nii.gz")
    command.add_argument("folder", type=Path, metavar="DIR", help="the dataset's folder")
    command.add_argument("--labels", required=True, type=Path,
                         help="CSV with columns patient_id, label (benign|malignant) and vertebra (the fractured "
                              "level, e.g. L1); other columns are not copied")
    command.add_argument("--out", type=Path, help="the manifest to write (default: DIR/manifest.csv); paths in it "
                         "are relative to its folder, so one outside DIR needs --allow-outside where it is read")
    command.add_argument("--force", action="store_true", help="replace --out if it exists (refused by default)")
    return parser


def main(argv=None) -> int:
    """The command line; bad input ends in `error: ...` and exit code 2, a bug keeps its traceback."""
    args = _parser().parse_args(argv)
    out = args.out or args.folder / "manifest.csv"
    try:
        layouts.refuse_overwrite(out, args.force)  # before the scan, which may take a while
        imported = layouts.import_cohort(args.layout, args.folder, args.labels)
        layouts.write_manifest(imported.entries, out, force=args.force)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if imported.unlabelled:
        more = len(imported.unlabelled) - SHOWN
        print(f"warning: {len(imported.unlabelled)} CT(s) in {args.folder} have no row in {args.labels} and were "
              f"left out: {', '.join(imported.unlabelled[:SHOWN])}{f' and {more} more' if more > 0 else ''}",
              file=sys.stderr)
    if layouts.paths_outside(imported.entries, out.parent):
        print(f"note: the manifest's paths lead outside {out.parent}; read it with --allow-outside "
              f"(python -m vfrac.prepare --cohort {out} --allow-outside)")
    print(f"wrote {len(imported.entries)} patient(s) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
