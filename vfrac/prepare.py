"""`python -m vfrac.prepare --cohort manifest.csv`: build the crop cache once.

A thin command over `vfrac.cohort` and `vfrac.data.cache`: it parses flags, shows
progress, writes the report of left-out patients and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from vfrac.cohort import read_manifest
from vfrac.data.cache import CropSettings, prepare_cohort, slice_counts
from vfrac.data.crops import BOX_MODES
from vfrac.errors import InputError

DEFAULT_CACHE = Path("data/cache")
REPORT_NAME = "prepare_report.csv"
SLICE_REPORT_NAME = "slice_report.csv"


def add_crop_arguments(parser: argparse.ArgumentParser) -> None:
    """The crop settings' flags, shared by this command and experiments.cv (read back by `crop_settings`)."""
    defaults = CropSettings()
    parser.add_argument("--margin", type=float, default=defaults.margin,
                        help="ROI square grown by this fraction of its side (default: %(default)s)")
    parser.add_argument("--box-mode", choices=BOX_MODES, default=defaults.box_mode,
                        help="a square per ROI slice, or one for the ROI's union (default: %(default)s)")
    parser.add_argument("--context", type=float, default=defaults.context,
                        help="surroundings kept around the square for box jitter (default: %(default)s)")
    parser.add_argument("--cache-size", type=int, default=defaults.cache_size,
                        help="crops are resampled to this many pixels square (default: %(default)s)")
    parser.add_argument("--min-area", type=float, default=defaults.min_area,
                        help="slice rule: keep ROI slices whose ROI area is at least this share of its "
                             "largest slice's, dropping slices through the spinous process or the edge "
                             "of the body; 0 keeps every ROI slice (default: %(default)s)")


def crop_settings(args: argparse.Namespace) -> CropSettings:
    """The flags of `add_crop_arguments` as settings; InputError names what is wrong."""
    try:
        return CropSettings.from_values(vars(args))
    except ValueError as error:
        raise InputError(f"crop settings: {error}") from error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vfrac.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", required=True, type=Path, help="manifest.csv of the cohort")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where entries go (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="patients prepared in parallel (default: %(default)s)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave bad patients out (listed in the report) instead of stopping")
    parser.add_argument("--allow-outside", action="store_true",
                        help="accept manifest paths that lead outside the manifest's folder (refused by default)")
    add_crop_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log skipped files and details")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        settings = crop_settings(args)
        cohort = read_manifest(args.cohort, skip_bad=args.skip_bad, allow_outside=args.allow_outside)
        print(f"{len(cohort.patients)} patient(s) in {args.cohort}; cache: {args.cache_dir}; {settings}")
        with tqdm(total=len(cohort.patients), unit="patient", desc="prepare") as bar:
            result = prepare_cohort(cohort.patients, settings, args.cache_dir, workers=args.workers,
                                    skip_bad=args.skip_bad, on_progress=lambda *_: bar.update())
    except InputError as error:  # a bug keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished patients stay cached; run again to continue", file=sys.stderr)
        return 130
    problems = [("(manifest)", p) for p in cohort.problems] + sorted(result.failures.items())
    report = args.cache_dir / REPORT_NAME
    report.unlink(missing_ok=True)  # an earlier run's list would read as this one's
    if problems:
        with open(report, "w", newline="") as handle:
            csv.writer(handle).writerows([("patient_id", "reason"), *problems])
        print(f"left out {len(problems)} patient(s) or row(s); reasons in {report}", file=sys.stderr)
    counts = slice_counts(result.entries)
    print(slice_rule_summary(counts, settings.min_area))
    write_slice_report(args.cache_dir / SLICE_REPORT_NAME, counts, settings.min_area)
    crops = sum(kept for kept, _ in counts.values())
    print(f"prepared {len(result.entries)} patient(s), {crops} crops "
          f"({result.built} built, {result.reused} already cached) "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


def slice_rule_summary(counts: dict[str, tuple[int, int]], min_area: float) -> str:
    """One line on what the slice rule kept and dropped, for the console and the run log."""
    kept = sum(k for k, _ in counts.values())
    dropped = [d for _, d in counts.values()]
    losers = [d for d in dropped if d]
    spread = f", {min(losers)}-{max(losers)} each (median {sorted(losers)[len(losers) // 2]})" if losers else ""
    return (f"slice rule (ROI area >= {min_area:.0%} of its largest slice): kept {kept} of {kept + sum(dropped)} "
            f"ROI slices; {len(losers)} of {len(counts)} patient(s) lost slices{spread}, "
            "those through the spinous process or the edge of the vertebral body")


def write_slice_report(path: Path, counts: dict[str, tuple[int, int]], min_area: float) -> None:
    """Per patient: crops kept, slices dropped and why."""
    reason = f"ROI area under {min_area:.0%} of the patient's largest ROI slice"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("patient_id", "kept", "dropped", "reason"))
        writer.writerows((pid, k, d, reason if d else "") for pid, (k, d) in sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main())
