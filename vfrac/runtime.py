"""The process settings vfrac's commands apply before TensorFlow loads.

Each is a default: a value already in the environment wins. They make the same command
and seed give the same numbers in any process on one machine (docs/reproducibility.md).
"""

from __future__ import annotations

import os

PROCESS_DEFAULTS = {
    # TensorFlow's C++ start-up chatter; errors still raise.
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # TensorFlow's oneDNN kernels (its default on x86) gave other weights for the same seed from one process to
    # the next, with the threads' timing; its own kernels give the same weights, about 5 % slower per training
    # step (bench/bench_train.py --paths tf tf-onednn).
    "TF_ENABLE_ONEDNN_OPTS": "0",
    # More than one inter-op thread ran independent ops of a step at once, in an order that changed the sums.
    # One costs no measurable speed: each op still spreads over every core.
    "TF_NUM_INTEROP_THREADS": "1",
    # MLflow's download progress bars would fill the console of every command that reads a run.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply_process_defaults() -> None:
    """Set PROCESS_DEFAULTS in os.environ where unset; call before TensorFlow is imported."""
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)
