"""The loader MLflow's `pyfunc.load_model` calls for a model vfrac logged.

MLflow's own Keras loader cannot rebuild the network: Keras finds vfrac's layers only
once vfrac has registered them, which nothing in MLflow imports. vfrac's models name
this module as their `python_function` loader, so `mlflow.pyfunc.load_model` (and
`mlflow models serve`) works wherever vfrac is installed; the Keras flavour is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class SliceClassifier:
    """pyfunc's model: network inputs (n, S, S, 3) float32, as the signature says -> probabilities (n, 1)."""

    def __init__(self, model):
        self.model = model

    def predict(self, data, params=None):
        images = data["image"] if isinstance(data, dict) else data
        return self.model.predict(np.asarray(images, np.float32), verbose=0)


def _load_pyfunc(path: str) -> SliceClassifier:
    """MLflow's loader protocol: `path` is the model's folder (its Keras flavour's data/model.keras inside)."""
    from vfrac.model.network import load_classifier  # TensorFlow (see above)

    return SliceClassifier(load_classifier(Path(path) / "data" / "model.keras"))
