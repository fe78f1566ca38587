"""Do the maps point at what the model uses? Deletion and insertion (Petsiuk et al., RISE, BMVC 2018).

The network-input pixels are ranked by the map, highest first. Deletion replaces them with
a baseline image in K equal steps and follows the model's probability of the explained
class: a faithful map takes the evidence away first, so the probability falls early and the
area under the curve is low. Insertion starts from the baseline and puts the pixels back in
the same order: the probability should rise early, a high area. Areas are by the trapezoid
rule over the fraction of pixels changed, 0..1.

The baseline is a blurred copy of the input (Gaussian, sigma a sixteenth of its side), as
RISE's insertion uses: it keeps each region's intensity and removes the edges and texture a
fracture is read from. A black image would ask the model about sharp holes it never saw in
training, and the curve would measure its reaction to them. Deletion and insertion share the
baseline, so both curves run between the same two images.

Pixels the map ranks equal (a flat map, the zeros of a rectified one) come in a seeded random
order: an all-zero map is the random-order control. Pure functions of arrays and a `predict`
callable (images -> probability of malignancy), so a hand-made model can check them.
"""

from __future__ import annotations

import cv2
import numpy as np

STEPS = 16
BLUR_FRACTION = 1 / 16  # the baseline's Gaussian sigma, as a fraction of the input's side
SEED = 0  # the order of pixels the map ranks equal
STEP_IMAGES_PER_CALL = 512  # images per call of `predict`: every step of several slices at once


def blurred(images: np.ndarray) -> np.ndarray:
    """The default baseline: each image blurred in its plane (channels apart), sigma = side * BLUR_FRACTION."""
    images = np.asarray(images, dtype=np.float32)
    sigma = images.shape[1] * BLUR_FRACTION
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for image in images]
                    ).reshape(images.shape)


def curves(predict, images: np.ndarray, maps: np.ndarray, classes, steps: int = STEPS, baseline=None,
           seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(deletion, insertion): (n, steps + 1) probabilities of each image's class, from 0 to all pixels changed.

    images (n, S, S, C) network inputs, maps (n, S, S), classes 1 (malignant) or 0 per image;
    `predict` takes a batch of images and returns the probability of malignancy of each.
    The baseline is `blurred(images)` unless given.
    """
    images = np.asarray(images, dtype=np.float32)
    maps, classes = np.asarray(maps, dtype=np.float32), np.asarray(classes)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, received {steps}")
    if maps.shape != images.shape[:3] or classes.shape != images.shape[:1]:
        raise ValueError(f"images {images.shape} need maps {images.shape[:3]} and {len(images)} classes; "
                         f"received maps {maps.shape} and classes {classes.shape}")
    baseline = blurred(images) if baseline is None else np.broadcast_to(np.asarray(baseline, np.float32),
                                                                        images.shape)
    draws = np.random.default_rng(seed)
    ranks = np.stack([_ranks(cam, draws) for cam in maps])
    per_call = max(1, STEP_IMAGES_PER_CALL // (2 * (steps + 1)))
    probabilities = []
    for start in range(0, len(images), per_call):
        part = slice(start, start + per_call)
        batch = np.concatenate([_steps(*item, steps) for item in zip(images[part], baseline[part], ranks[part],
                                                                     strict=True)])
        probabilities.append(np.asarray(predict(batch), dtype=np.float64).reshape(-1, 2, steps + 1))
    malignant = np.concatenate(probabilities)
    explained = np.where(classes[:, None, None] == 1, malignant, 1.0 - malignant)
    return explained[:, 0], explained[:, 1]


def area(curve: np.ndarray) -> np.ndarray:
    """The area under each curve (last axis) over the fraction of pixels changed, 0..1, by the trapezoid rule."""
    curve = np.asarray(curve, dtype=np.float64)
    return np.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), axis=-1)


def faithfulness(predict, images, maps, classes, steps: int = STEPS, baseline=None, seed: int = SEED) -> dict:
    """The mean deletion and insertion areas of the maps of `images` (see `curves`), and how many slices."""
    deletion, insertion = curves(predict, images, maps, classes, steps, baseline, seed)
    return {"deletion_auc": float(area(deletion).mean()), "insertion_auc": float(area(insertion).mean()),
            "slices": len(deletion)}


def _ranks(cam: np.ndarray, draws: np.random.Generator) -> np.ndarray:
    """Each pixel's place in the map's order (0 first: the highest), ties in random order."""
    order = np.lexsort((draws.permutation(cam.size), -cam.ravel()))
    ranks = np.empty(cam.size, dtype=np.int64)
    ranks[order] = np.arange(cam.size)
    return ranks.reshape(cam.shape)


def _steps(image: np.ndarray, baseline: np.ndarray, ranks: np.ndarray, steps: int) -> np.ndarray:
    """(2 * (steps + 1), S, S, C): deletion's images, then insertion's, with 0, 1/steps, ..., all pixels changed."""
    changed = ranks[None] < np.linspace(0, ranks.size, steps + 1).round()[:, None, None]
    changed = changed[..., None]
    return np.concatenate([np.where(changed, baseline, image), np.where(changed, image, baseline)])
