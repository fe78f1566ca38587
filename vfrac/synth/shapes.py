"""Soft-edged 2-D shapes: occupancy in [0, 1] per pixel, for partial-volume edges."""

from __future__ import annotations

import cv2
import numpy as np


def ellipse(u, v, a, b, pixel, cu=0.0, cv=0.0):
    """Ellipse with semi-axes (a, b) around (cu, cv); the edge ramps over one pixel."""
    du, dv = (u - cu) / a, (v - cv) / b
    q = np.sqrt(du * du + dv * dv) + 1e-6
    gradient = np.sqrt((du / a) ** 2 + (dv / b) ** 2) / q + 1e-9
    return np.clip(0.5 - (q - 1.0) / gradient / pixel, 0.0, 1.0).astype(np.float32)


def box(u, v, u0, u1, v0, v1, pixel):
    """Axis-aligned rectangle [u0, u1] x [v0, v1] with one-pixel edge ramps."""
    ramp_u = np.clip(np.minimum(u - u0, u1 - u) / pixel + 0.5, 0.0, 1.0)
    ramp_v = np.clip(np.minimum(v - v0, v1 - v) / pixel + 0.5, 0.0, 1.0)
    return (ramp_u * ramp_v).astype(np.float32)


def ramp(values, start, pixel):
    """0 below `start`, 1 above, over one pixel."""
    return np.clip((values - start) / pixel + 0.5, 0.0, 1.0).astype(np.float32)


def mix(image, value, occupancy):
    """Lay `value` over `image` where `occupancy` says, in place."""
    image *= 1.0 - occupancy
    image += occupancy * value
    return image


def smooth_noise(rng, shape, sigma_pixels):
    """Zero-mean, unit-variance Gaussian noise blurred in-plane: texture or CT noise."""
    field = rng.standard_normal(shape, dtype=np.float32)
    if sigma_pixels > 0:
        for plane in field.reshape(-1, *shape[-2:]):
            cv2.GaussianBlur(plane, (0, 0), sigma_pixels, dst=plane)
        field /= field.std() + 1e-6
    return field
