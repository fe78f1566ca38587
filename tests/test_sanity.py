"""The randomisation cascade: what each stage re-initialises, and no global random state touched."""

import random

import numpy as np
import pytest

from explain.sanity import CASCADE, randomized_cascade
from vfrac.model import build_classifier


@pytest.fixture(scope="module")
def model():
    return build_classifier(32)


def _weights(model, prefix):
    return [w for layer in model.layers if layer.name.startswith(prefix) for w in layer.get_weights()]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_each_stage_reinitialises_its_layers_and_keeps_the_ones_below(model):
    head, conv1 = _weights(model, "malignancy"), _weights(model, "conv1")
    stages = randomized_cascade(model, seed=7)
    stage, randomized = next(stages)
    assert stage == CASCADE[0] == "malignancy"
    assert not _same(_weights(randomized, "malignancy"), head)
    assert _same(_weights(randomized, "conv1"), conv1)
    assert _same(_weights(randomized, "conv5"), _weights(model, "conv5"))
    *_, (stage, randomized) = stages
    assert stage == "conv1" and not _same(_weights(randomized, "conv1_conv"), _weights(model, "conv1_conv"))
    assert _same(_weights(model, "malignancy"), head)  # the trained model is left as it was


def test_the_same_seed_gives_the_same_network_and_global_generators_are_untouched(model):
    random.seed(11)
    np.random.seed(11)
    expected_python, expected_numpy = random.random(), np.random.random()
    random.seed(11)
    np.random.seed(11)
    first = [w.copy() for w in _weights(list(randomized_cascade(model, seed=3))[-1][1], "conv")]
    again = [w.copy() for w in _weights(list(randomized_cascade(model, seed=3))[-1][1], "conv")]
    other = _weights(list(randomized_cascade(model, seed=4))[-1][1], "conv")
    assert random.random() == expected_python and np.random.random() == expected_numpy
    assert _same(first, again) and not _same(first, other)


@pytest.mark.slow
def test_one_explainer_per_draw_gives_each_stages_own_maps(model):
    """The review builds its Explainer at the head's stage and reuses it down the cascade."""
    from explain.cam import Explainer

    images = np.random.default_rng(0).normal(0, 50, (2, 32, 32, 3)).astype("float32")
    reused = None
    for _, randomized in randomized_cascade(model, seed=5):
        reused = reused or Explainer(randomized, "conv2_block3_out")
        fresh = Explainer(randomized, "conv2_block3_out")
        np.testing.assert_allclose(reused.maps(images, "hirescam", [1, 1]), fresh.maps(images, "hirescam", [1, 1]),
                                   atol=1e-5)
