"""The process settings vfrac's commands apply before TensorFlow loads.

Each is a default: a value already in the environment wins. They make the same command
and seed give the same numbers in any process on one machine (docs/reproducibility.md).
"""

from __future__ import annotations

import os

PROCESS_DEFAULTS = {
    # TensorFlow's C++ start-up chatter; errors still raise.
    "TF_CPP_MIN_LOG_LEVEL": "3",
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
