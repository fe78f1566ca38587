"""Peak memory of reading issue 12's memory bombs, and a legitimate CT, in this tree and another.

    git clone -q . /tmp/before   # at the commit to compare with
    python bench/bench_bombs.py [--before /tmp/before] [--cap-gb 12] [--slices 300]

Writes the bombs at the issue's sizes (a 7.8 MB .nii.gz of 2000^3 zeros, a header
claiming 2000^3, a 3.5 MB deflated DICOM of one 60000 x 60000 frame, uncompressed and
RLE files claiming 60000 x 60000) and a legitimate 512 x 512 x `--slices` int16 CT as
.nii.gz and as a DICOM series. Each read runs in a fresh process under an
address-space cap (`--cap-gb`, so that a bomb cannot take the machine); its peak
resident memory during the read comes from the kernel (VmHWM, reset after the
imports). Prints one table: per case and tree, the peak and how the read ended; for
the legitimate CT also the peak above the memory held before the read, as a
multiple of the float32 volume.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import RLELossless

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.dicom_factory import write_claim, write_deflated_zeros, write_series  # noqa: E402
from tests.io.test_bombs import nifti_header, write_gzip  # noqa: E402

CHILD = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
import nibabel, numpy as np, pydicom
from vfrac.io.grid import Volume
from vfrac.io.volume import load_mask, load_volume

def megabytes(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field)) / 1024

kind, path = sys.argv[1:]
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak (VmHWM) restarts from here: imports are not the read
held, started = megabytes("VmRSS:"), time.perf_counter()
try:
    if kind == "ct":
        load_volume(path)
    else:
        load_mask(path, Volume(np.zeros((2, 2, 2), np.float32), np.eye(4)))
    outcome = "read"
except Exception as error:
    outcome = f"{{type(error).__name__}}: {{error}}"
print(json.dumps([megabytes("VmHWM:"), held, outcome, time.perf_counter() - started]))
"""


def write_cases(folder: Path, slices: int) -> dict[str, tuple[str, Path]]:
    """case: (how to read it, path)."""
    zeros = write_gzip(folder / "zeros.nii.gz", nifti_header((2000, 2000, 2000)), zeros=2000**3)
    claims = {}
    for name, write in [("deflated", lambda path: write_deflated_zeros(path, 60000, 60000)),
                        ("native", lambda path: write_claim(path, 60000, 60000)),
                        ("rle", lambda path: write_claim(path, 60000, 60000, RLELossless))]:
        (folder / name).mkdir()
        claims[name] = write(folder / name / "1.dcm")
    stored = np.random.default_rng(0).integers(-1024, 2000, size=(slices, 512, 512), dtype=np.int16)
    nib.save(nib.Nifti1Image(np.transpose(stored, (2, 1, 0)), np.diag([-0.7, -0.7, 1.0, 1.0])),
             str(folder / "ct.nii.gz"))
    write_series(folder / "series", stored)
    return {
        f".nii.gz of 2000^3 zeros ({_mb(zeros)}), as CT": ("ct", zeros),
        f".nii.gz of 2000^3 zeros ({_mb(zeros)}), as ROI": ("roi", zeros),
        ".nii.gz header claiming 2000^3 ({} bytes)".format(
            _bytes(write_gzip(folder / "header.nii.gz", nifti_header((2000, 2000, 2000))))): (
            "ct", folder / "header.nii.gz"),
        f"deflated DICOM, one 60000 x 60000 frame ({_mb(claims['deflated'])})": ("ct", folder / "deflated"),
        f"uncompressed DICOM claiming 60000 x 60000 ({_bytes(claims['native'])} bytes)": ("ct", folder / "native"),
        f"RLE DICOM claiming 60000 x 60000 ({_bytes(claims['rle'])} bytes)": ("ct", folder / "rle"),
        f"legitimate 512 x 512 x {slices} int16 .nii.gz ({_mb(folder / 'ct.nii.gz')})": ("ct", folder / "ct.nii.gz"),
        f"legitimate 512 x 512 x {slices} DICOM series": ("ct", folder / "series"),
    }


def peak(tree: Path, kind: str, path: Path, cap: int) -> tuple[float, float, str, float]:
    """Peak resident MB during one read in a fresh capped process, MB held before it, outcome, seconds."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(cap=cap), kind, str(path)], cwd=tree, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": "1"})
    if child.returncode:
        return float("nan"), float("nan"), f"died: {child.stderr.strip().splitlines()[-1:]}", float("nan")
    return tuple(json.loads(child.stdout.splitlines()[-1]))


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _bytes(path: Path) -> int:
    return path.stat().st_size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout to measure beside this tree")
    parser.add_argument("--cap-gb", type=float, default=12.0)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args(argv)
    trees = {"after": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    volume_mb = args.slices * 512 * 512 * 4 / 2**20
    with tempfile.TemporaryDirectory() as folder:
        cases = write_cases(Path(folder), args.slices)
        print(f"| case | {' | '.join(f'{name}: peak, outcome' for name in trees)} |")
        print(f"| --- | {' | '.join('---' for _ in trees)} |")
        for case, (kind, path) in cases.items():
            cells = []
            for tree in trees.values():
                mb, held, outcome, seconds = peak(tree, kind, path, int(args.cap_gb * 2**30))
                ratio = f" ({(mb - held) / volume_mb:.2f}x the float32 volume)" if "legitimate" in case else ""
                cells.append(f"{mb:,.0f} MB{ratio}, {outcome[:110]} ({seconds:.1f} s)")
            print(f"| {case} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
