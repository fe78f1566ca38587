"""`python -m vfrac.synth --out DIR --patients N --seed S`: write a synthetic cohort.

`--demo` takes every generator setting of the built-in demo (`vfrac.synth.DEMO`), so
`python -m vfrac.synth --demo --out DIR --seed S` is the demo's cohort with another seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from vfrac.synth.generate import DEMO, generate_cohort
from vfrac.synth.params import Site


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vfrac.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true",
                        help="the built-in demo's settings (" + ", ".join(f"{k} {v}" for k, v in DEMO.items())
                        + "); only --seed, --workers and --overwrite may be given with it")
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must be new or empty)")
    parser.add_argument("--patients", type=int, help="number of patients (default: 60)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same cohort (default: %(default)s)")
    parser.add_argument("--malignant-fraction", type=float,
                        help="share of malignant patients; the study had 296/433 (default: 0.68)")
    parser.add_argument("--difficulty", type=float,
                        help="0: textbook cases .. 1: features overlap often between classes (default: 0.3)")
    parser.add_argument("--matrix", type=int, help="image rows and columns; smaller is faster (default: 512)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="patients made in parallel (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cohort in --out")
    shift = parser.add_argument_group("another site's scanner (also with --demo; default: no shift)")
    shift.add_argument("--noise-scale", type=float, default=1.0, help="image noise SD times this")
    shift.add_argument("--slice-thickness", type=float, help="mm: every series at this thickness and spacing")
    shift.add_argument("--hu-offset", type=float, default=0.0, help="HU added to every voxel")
    args = parser.parse_args(argv)
    settings = {"patients": args.patients, "malignant_fraction": args.malignant_fraction,
                "difficulty": args.difficulty, "matrix": args.matrix}
    given = [f"--{k.replace('_', '-')}" for k, v in settings.items() if v is not None]
    if args.demo and given:
        parser.error(f"--demo fixes every generator setting but the seed; drop {', '.join(given)}")
    args.settings = DEMO if args.demo else {k: v for k, v in settings.items() if v is not None}
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
