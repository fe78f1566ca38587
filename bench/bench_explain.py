"""Slices explained per second, against one forward+backward pass of the same batch.

Run by hand: `.venv/bin/python bench/bench_explain.py [--sizes 64 224] [--batch 16] [--layer L]`.
The baseline is the gradient of the malignancy output with respect to the input for
the same batch, traced (tf.function); weights are random (speed does not depend on
them). Measured: what the review runs (`Explainer.explain`: Grad-CAM, HiResCAM and the
slices' attribution from one traced pass), tf-keras-vis's eager Grad-CAM (what the
review ran before), and each other method alone.
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
from vfrac.model.network import build_classifier  # noqa: E402


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
    parser.add_argument("--layer", default=DEFAULT_LAYER, help="conv2_block3_out is the demo's")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; batch {args.batch}")
    for size in args.sizes:
        measure(size, args)


def measure(size: int, args) -> None:
    model = build_classifier(size)
    images = np.random.default_rng(0).normal(0, 50, (args.batch, size, size, 3)).astype(np.float32)
    classes = np.arange(args.batch) % 2

    @tf.function(reduce_retracing=True)
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            output = model(x, training=False)
        return tape.gradient(output, x)

    x = tf.constant(images)
    baseline = best_of(args.repeats, lambda: forward_backward(x).numpy())
    explainer = Explainer(model, args.layer)
    print(f"S={size}, layer {args.layer}: forward+backward {args.batch / baseline:.1f} slices/s "
          f"({baseline:.2f} s per batch)")
    review = ("gradcam", "hirescam")
    timings = {"review: " + " + ".join(review) + " + attribution, one pass": lambda: explainer.explain(
        images, classes, review, batch_size=args.batch),
        "gradcam by tf-keras-vis (eager)": lambda: explainer._tf_keras_vis(images, "gradcam", classes, 32)}
    timings |= {m: (lambda m=m: explainer.maps(images, m, classes, batch_size=args.batch, max_n=32))
                for m in args.methods if m not in review}
    for name, work in timings.items():
        seconds = best_of(1 if name == "scorecam" else args.repeats, work)
        print(f"  {name:50s} {args.batch / seconds:7.1f} slices/s, {seconds / baseline:5.2f}x forward+backward")


if __name__ == "__main__":
    main()
