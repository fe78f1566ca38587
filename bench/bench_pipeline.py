"""Throughput of the tf.data pipeline and of ResNet50 training, fed by it or by preloaded tensors.

    python bench/bench_pipeline.py [--sizes 224 64] [--steps 12]
    python bench/bench_pipeline.py --memory

For each input size S: crops/s of the training pipeline alone (no model), images/s of
training on one preloaded batch (the baseline), and images/s of training fed by the
pipeline; and the share of the machine's measured float32 matmul peak that a training
step reaches (ResNet50: 4.1 GFLOPs per 224 x 224 forward, x (S/224)^2; a step = 3
forwards). --memory (alone, in a fresh process) builds a cache of the study's size
(433 patients x 15 crops) and reports the pipeline's peak host memory over two epochs.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.bench_load import cpu_name  # noqa: E402
from vfrac.data.cache import CropSettings, Prepared, write_entry  # noqa: E402
from vfrac.data.pipeline import make_dataset  # noqa: E402
from vfrac.model.network import build_classifier  # noqa: E402
from vfrac.model.train import Trainer  # noqa: E402

RESNET50_GFLOPS_224 = 4.1
BATCH = 16


def fake_cache(folder: Path, patients: int, crops_each: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    size = CropSettings().cache_size
    entries, labels = {}, {}
    for i in range(patients):
        pid = f"B{i:04d}"
        crops = rng.integers(-1000, 1500, (crops_each, size, size, 3), dtype=np.int16)
        entries[pid] = folder / f"{pid}.npz"
        write_entry(entries[pid], Prepared(pid, crops, np.arange(crops_each, dtype=np.int32),
                                           np.zeros((crops_each, 3), np.int32), np.ones(3), 0.2))
        labels[pid] = i % 3 != 0
    return entries, labels


def pipeline_rate(dataset, epochs: int = 3) -> float:
    for _ in dataset:  # first epoch fills the cache
        pass
    started, count = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in dataset:  # (images, labels) or, when training, (images, labels, weights)
            count += int(batch[0].shape[0])
    return count / (time.perf_counter() - started)


def training_rates(size: int, datasets: dict, steps: int) -> dict:
    """Images/s of model.fit over `steps` batches from each dataset, alternating, best of two.

    One model serves all measurements, warmed up first, so that the only difference
    between them is where the batches come from.
    """
    first = next(iter(datasets.values()))
    trainer = Trainer(lambda: build_classifier(size))
    trainer.fit(first.take(2), epochs=1)
    model = trainer.model
    rates = {name: 0.0 for name in datasets}
    for _ in range(2):
        for name, dataset in datasets.items():
            started = time.perf_counter()
            model.fit(dataset.take(steps), epochs=1, verbose=0)
            rates[name] = max(rates[name], steps * BATCH / (time.perf_counter() - started))
    return rates


def matmul_peak() -> float:
    """Measured float32 GFLOP/s of a large matmul: the practical peak of this machine."""
    a = tf.random.normal((2048, 2048))
    tf.linalg.matmul(a, a).numpy()
    started = time.perf_counter()
    for _ in range(10):
        result = tf.linalg.matmul(a, a)
    result.numpy()
    return 10 * 2 * 2048**3 / (time.perf_counter() - started) / 1e9


def memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def memory_check(folder: Path) -> None:
    entries, labels = fake_cache(folder, 433, 15)
    on_disk = sum(p.stat().st_size for p in entries.values()) / 2**20
    dataset, index = make_dataset(entries, labels, input_size=224, training=True, batch_size=32)
    before = memory_mb("VmRSS")
    for _ in range(2):
        for _ in dataset:
            pass
    peak = memory_mb("VmHWM")
    print(f"memory: {len(index)} crops ({on_disk:.0f} MB of int16 cache), 2 training epochs at S = 224: "
          f"process {before:.0f} MB before, peak {peak:.0f} MB: the pipeline {peak - before:.0f} MB (target < 2048)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--steps", type=int, default=12, help="training batches timed per measurement")
    parser.add_argument("--memory", action="store_true", help="run only the study-size memory check")
    args = parser.parse_args(argv)
    if args.memory:
        with tempfile.TemporaryDirectory() as folder:
            memory_check(Path(folder))
        return
    peak = matmul_peak()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}; "
          f"measured matmul peak {peak:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as folder:
        entries, labels = fake_cache(Path(folder), 40, 15)
        for size in args.sizes:
            dataset, _ = make_dataset(entries, labels, input_size=size, training=True, batch_size=BATCH)
            dataset = dataset.repeat()
            crops = pipeline_rate(dataset.take(600 // BATCH))
            # The same batch from memory, with the pipeline's element spec (no retracing).
            preloaded = tf.data.Dataset.from_tensor_slices(next(iter(dataset))).repeat().batch(BATCH)
            steps = max(args.steps, int(args.steps * (224 / size) ** 2 / 2))  # similar seconds per size
            rates = training_rates(size, {"preloaded": preloaded, "pipeline": dataset}, steps)
            baseline, fed = rates["preloaded"], rates["pipeline"]
            gflops = 3 * RESNET50_GFLOPS_224 * (size / 224) ** 2 * baseline
            print(f"S = {size} ({steps} steps): pipeline {crops:.0f} crops/s ({crops / baseline:.0f}x training, "
                  "target >= 10x); "
                  f"training on preloaded tensors {baseline:.1f} img/s, fed by the pipeline {fed:.1f} img/s "
                  f"({(fed / baseline - 1) * 100:+.1f} %, target within 5 %); "
                  f"{gflops:.0f} GFLOP/s = {gflops / peak * 100:.0f} % of the matmul peak")


if __name__ == "__main__":
    main()
