"""`python -m vfrac.synth --out DIR --patients N --seed S`: write a synthetic cohort.

`--demo` takes every generator setting of the built-in demo (`vfrac.synth.DEMO`), so
`python -m vfrac.synth --demo --out DIR --seed S` is the demo's cohort with another seed, and
`python -m vfrac.synth --demo` alone writes the demo's own cohort (seed 0) to `data/demo/`,
where `python -m experiments.cv` reads it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from vfrac.synth.generate import DEMO, DEMO_FOLDER, DEMO_SEED, generate_cohort
from vfrac.synth.params import Site

SETTINGS = ("patients", "malignant_fraction", "difficulty", "matrix")  # what --demo fixes
SITE_DEFAULTS = {"noise_scale": 1.0, "slice_thickness": None, "hu_offset": 0.0}  # no shift


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


FIXED = ", ".join(map(_flag, SETTINGS[:-1])) + " and " + _flag(SETTINGS[-1])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vfrac.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true",
                        help="the built-in demo's settings (" + ", ".join(f"{k} {v}" for k, v in DEMO.items())
                        + f"), which {FIXED} may not override; --seed, --workers, "
                        "--overwrite and the site options below may be given with it. Without --out it writes "
                        f"the demo's own cohort (seed {DEMO_SEED}, no site shift) to {DEMO_FOLDER}/, "
                        "where python -m experiments.cv reads it")
    parser.add_argument("--out", type=Path, help="folder to create (must be new or empty); required unless --demo "
                        f"(default then: {DEMO_FOLDER})")
    parser.add_argument("--patients", type=int, help="number of patients (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same cohort (default: %(default)s)")
    parser.add_argument("--malignant-fraction", type=float,
                        help="share of malignant patients; the study had 296/433 (default: 0.68)")
    parser.add_argument("--difficulty", type=float,
                        help="0: textbook cases .. 1: features overlap often between classes (default: 0.3)")
    parser.add_argument("--matrix", type=int, help="image rows and columns, 16 to 1024; smaller is faster "
                        "(default: 512)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="patients made in parallel (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cohort in --out")
    shift = parser.add_argument_group("another site's scanner (also with --demo; default: no shift)")
    shift.add_argument("--noise-scale", type=float, default=SITE_DEFAULTS["noise_scale"],
                       help="image noise SD times this (0 to 10)")
    shift.add_argument("--slice-thickness", type=float, help="mm: every series at this thickness and spacing "
                       "(0.5 to 10)")
    shift.add_argument("--hu-offset", type=float, default=SITE_DEFAULTS["hu_offset"],
                       help="HU added to every voxel (-500 to 500)")
    args = parser.parse_args(argv)
    given = [_flag(k) for k in SETTINGS if getattr(args, k) is not None]
    if args.demo and given:
        parser.error(f"--demo fixes {FIXED} to the demo's; drop {', '.join(given)}")
    if args.workers < 1:
        parser.error(f"--workers must be 1 or more, received {args.workers}")
    if args.out is None:
        if not args.demo:
            parser.error(f"--out is required (only --demo has a default folder, {DEMO_FOLDER})")
        shifted = [_flag(k) for k, v in SITE_DEFAULTS.items() if getattr(args, k) != v]
        if args.seed != DEMO_SEED or shifted:
            other = ", ".join(([f"--seed {args.seed}"] if args.seed != DEMO_SEED else []) + shifted)
            parser.error(f"--demo without --out writes {DEMO_FOLDER}, the demo's own cohort (seed {DEMO_SEED}, "
                         f"no site shift) that python -m experiments.cv reads; with {other}, give --out DIR")
        args.out = DEMO_FOLDER
    args.settings = DEMO if args.demo else {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    patients = args.settings.get("patients", 60)
    try:
        site = Site(args.noise_scale, args.slice_thickness, args.hu_offset)
        with tqdm(total=patients, unit="patient", desc="synth") as bar:
            manifest = generate_cohort(args.out, seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                                       on_progress=bar.update, site=site, **({"patients": 60} | args.settings))
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written to --out", file=sys.stderr)
        return 130
    if bar.n == 0:
        print(f"{manifest} already holds this cohort (same settings); nothing to do")
    else:
        print(f"wrote {patients} synthetic patients to {manifest} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
