"""Slices explained per second per method, against a forward+backward pass of the same batch.

Run by hand: `.venv/bin/python bench/bench_explain.py [--sizes 64 224] [--batch 16]`.
The baseline is the gradient of the malignancy output with respect to the input for
the same batch, eager like the maps; weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from explain.cam import DEFAULT_LAYER, METHODS, Explainer  # noqa: E402
from vfrac.model import build_classifier  # noqa: E402


def best_of(repeats: int, work) -> float:
    work()  # warm-up: first calls build graphs
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; batch {args.batch}")
    for size in args.sizes:
        measure(size, args)


def measure(size: int, args) -> None:
    model = build_classifier(size)
    images = np.random.default_rng(0).normal(0, 50, (args.batch, size, size, 3)).astype(np.float32)
    classes = np.arange(args.batch) % 2

    def forward_backward():
        x = tf.constant(images)
        with tf.GradientTape() as tape:
            tape.watch(x)
            output = model(x, training=False)
        tape.gradient(output, x).numpy()

    baseline = best_of(args.repeats, forward_backward)
    explainer = Explainer(model, DEFAULT_LAYER)
    print(f"S={size}: forward+backward {args.batch / baseline:.1f} slices/s ({baseline:.2f} s per batch)")
    for method in args.methods:
        seconds = best_of(1 if method == "scorecam" else args.repeats,
                          lambda m=method: explainer.maps(images, m, classes, batch_size=args.batch, max_n=32))
        print(f"  {method:10s} {args.batch / seconds:7.1f} slices/s, {seconds / baseline:5.2f}x forward+backward")


if __name__ == "__main__":
    main()
