"""The HU window, defined once: the network's input, the overlays and the previews all use it."""

from __future__ import annotations

import numpy as np

BONE_WINDOW = (400.0, 1800.0)  # level, width in HU: bone destruction and soft tissue mass both in range
SOFT_TISSUE_WINDOW = (40.0, 400.0)  # a reader's soft tissue preset: a paravertebral mass against muscle


def window_unit(hu, window=BONE_WINDOW, clip=np.clip):
    """HU -> 0..1 through a window (level, width): 0 at level - width/2, 1 at level + width/2.

    `clip` is np.clip for arrays; the input pipeline passes tf.clip_by_value for tensors.
    """
    level, width = float(window[0]), float(window[1])
    if width <= 0:
        raise ValueError(f"window width must be > 0, received {width}")
    return clip((hu - (level - width / 2.0)) / width, 0.0, 1.0)


def grey(hu, window=BONE_WINDOW) -> np.ndarray:
    """HU -> uint8 grey levels through a window, for images a reader looks at."""
    return (window_unit(np.asarray(hu, dtype=np.float32), window) * 255.0).round().astype(np.uint8)
