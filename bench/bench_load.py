"""Time `load_volume` on a 512 x 512 x 200 CT series against SimpleITK, in one process.

    pip install -r bench/requirements.txt
    python bench/bench_load.py [--slices 200] [--repeats 3]

Prints wall times (best of the repeats, files in the page cache for both readers),
their ratio, and load_volume's peak traced memory against the float32 volume size.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.dicom_factory import write_series  # noqa: E402
from vfrac.io.volume import load_volume  # noqa: E402


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def read_with_simpleitk(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetOutputPixelType(sitk.sitkFloat32)  # HU as float32, like load_volume
    return sitk.GetArrayFromImage(reader.Execute())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 2500, size=(args.slices, 512, 512), dtype=np.int16)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        write_series(folder, stored, dz=1.0, spacing=(0.7, 0.7))
        ours = load_volume(folder)
        peer = read_with_simpleitk(folder)
        assert np.array_equal(ours.hu, peer), "the two readers disagree"
        ours_s = best_time(lambda: load_volume(folder), args.repeats)
        peer_s = best_time(lambda: read_with_simpleitk(folder), args.repeats)
        tracemalloc.start()
        load_volume(folder)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    volume_mb = ours.hu.nbytes / 2**20
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"series: {args.slices} x 512 x 512, uncompressed int16, {args.slices} files")
    print(f"load_volume: {ours_s:.3f} s   SimpleITK ImageSeriesReader: {peer_s:.3f} s   "
          f"ratio: {ours_s / peer_s:.2f}x (target <= 2x)")
    print(f"load_volume peak memory: {peak / 2**20:.0f} MB = {peak / 2**20 / volume_mb:.2f}x the float32 volume "
          f"({volume_mb:.0f} MB; target < 2x)")


if __name__ == "__main__":
    main()
