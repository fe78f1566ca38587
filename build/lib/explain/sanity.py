"""Do the maps depend on what the network learnt? The model randomisation test (Adebayo
et al., 2018): re-initialise the network from the top down, stage by stage, and compare
each stage's maps with the trained model's by rank correlation. Maps that survive the
full randomisation show the image, not what was learnt.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from scipy.stats import spearmanr

# Randomised from the top, cumulatively: head, then ResNet50's stages down to the first.
CASCADE = ("malignancy", "conv5", "conv4", "conv3", "conv2", "conv1")
RANDOMIZATION_SEEDS = (2018, 2019, 2020)  # not the training seeds (run seed + fold)
SANITY_LIMIT = 0.5  # mean rank correlation with a randomised network at or above this: the method fails


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two maps: 0 when one of them is flat, NaN when both are."""
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return math.nan
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomized_cascade(model: keras.Model, seed: int = RANDOMIZATION_SEEDS[0]):
    """(stage, model) with weights re-initialised from the top down to `stage`, cumulatively.

    The last stage, "conv1", leaves no trained weight: the fully randomised network.
    The seed differs from the training seeds (run seed + fold): with the same seed a
    briefly trained layer would be "re-initialised" to nearly its own weights.
    Every stage yields the same model, re-initialised further in place (cloning
    ResNet50 once per stage cost more than its maps): use it before the next stage.
    No global random state is read or reseeded: the initialisers get seeds of their own.
    """
    fresh = _seeded_clone(model, seed)  # new layers, new initial weights
    randomized = _seeded_clone(model, seed + 1)
    randomized.set_weights(model.get_weights())
    for stage in CASCADE:
        for layer in randomized.layers:
            if layer.name.startswith(stage):
                layer.set_weights(fresh.get_layer(layer.name).get_weights())
        yield stage, randomized


def randomized_maps(explainer, model: keras.Model, images, classes, methods, seeds=RANDOMIZATION_SEEDS) -> dict:
    """{(method, stage): [each draw's maps of `images`]} down the cascade of `model`, one draw per seed.

    `explainer` is an `explain.cam.Explainer` built on `model` (sharing its layers):
    every stage of every draw is loaded into it, so its one traced gradient pass serves
    them all. Each draw starts from the trained weights, which the model holds again at the end.
    """
    weights = model.get_weights()
    randomized = {}
    for seed in seeds:
        model.set_weights(weights)  # the cascade copies the model when its first stage is drawn
        for stage, random_model in randomized_cascade(model, seed):
            maps = explainer.load(random_model).explain(images, classes, methods, attribution=False)[0]
            for method, stage_maps in maps.items():
                randomized.setdefault((method, stage), []).append(stage_maps)
    model.set_weights(weights)
    return randomized


def _seeded_clone(model: keras.Model, seed: int) -> keras.Model:
    """A copy of the model's layers whose initialisers draw from `seed` alone.

    Keras initialisers without a seed take one from Python's global `random`; seeding
    that (keras.utils.set_random_seed) would also reseed TensorFlow, and a new global
    seed makes TensorFlow trace a model's training step again.
    """
    draws = np.random.default_rng(seed)

    def clone(layer):
        config = layer.get_config()
        if "seed" in config:  # layers with random streams of their own (dropout)
            config["seed"] = int(draws.integers(2**31 - 1))
        for value in config.values():
            if isinstance(value, dict) and "seed" in value.get("config", {}):
                value["config"]["seed"] = int(draws.integers(2**31 - 1))
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def sanity_check(trained_maps: dict, randomized_maps: dict) -> list[dict]:
    """Rows (method, randomized_to, spearman_mean, spearman_sd, images, draws, flagged).

    trained_maps: method -> (n, S, S); randomized_maps: (method, stage) -> a list of
    (n, S, S), one per random draw. One draw is not enough: whether a random head
    happens to agree in sign with the trained one swings the correlation, so the
    mean is over every image of every draw.
    A method is flagged when its maps from the fully randomised network (stage "conv1")
    still agree with the trained ones: it then shows the image, not what was learnt.
    The cascade's earlier stages are reported, not judged.
    """
    rows = []
    for (method, stage), draws in randomized_maps.items():
        rhos = [rank_correlation(t, r) for maps in draws for t, r in zip(trained_maps[method], maps, strict=True)]
        rhos = [r for r in rhos if not math.isnan(r)]
        rows.append({"method": method, "randomized_to": stage,
                     "spearman_mean": float(np.mean(rhos)) if rhos else math.nan,
                     "spearman_sd": float(np.std(rhos)) if rhos else math.nan,
                     "images": len(trained_maps[method]), "draws": len(draws)})
    failing = {r["method"] for r in rows if r["randomized_to"] == CASCADE[-1] and r["spearman_mean"] >= SANITY_LIMIT}
    for row in rows:
        row["flagged"] = int(row["method"] in failing)
    return rows
