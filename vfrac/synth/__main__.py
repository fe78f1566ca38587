"""`python -m vfrac.synth --out DIR --patients N --seed S`: write a synthetic cohort."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from vfrac.synth.generate import generate_cohort


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vfrac.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must be new or empty)")
    parser.add_argument("--patients", type=int, default=60, help="number of patients (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same cohort (default: %(default)s)")
    parser.add_argument("--malignant-fraction", type=float, default=0.68,
                        help="share of malignant patients; the study had 296/433 (default: %(default)s)")
    parser.add_argument("--difficulty", type=float, default=0.3,
                        help="0: textbook cases .. 1: features overlap often between classes (default: %(default)s)")
    parser.add_argument("--matrix", type=int, default=512,
                        help="image rows and columns; smaller is faster, for tests (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="patients made in parallel (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cohort in --out")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        with tqdm(total=args.patients, unit="patient", desc="synth") as bar:
            manifest = generate_cohort(args.out, args.patients, seed=args.seed,
                                       malignant_fraction=args.malignant_fraction, difficulty=args.difficulty,
                                       matrix=args.matrix, workers=args.workers, overwrite=args.overwrite,
                                       on_progress=bar.update)
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written to --out", file=sys.stderr)
        return 130
    if bar.n == 0:
        print(f"{manifest} already holds this cohort (same settings); nothing to do")
    else:
        print(f"wrote {args.patients} synthetic patients to {manifest} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
