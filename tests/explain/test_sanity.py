"""The randomisation cascade: what each stage re-initialises, and no global random state touched.

On the tiny ResNet (`--arch resnet-tiny`): the cascade and `Explainer.load` go by stage prefixes and layers,
which it shares with ResNet50, at a fraction of the tracing time.
"""

import random

import numpy as np
import pytest

from explain.sanity import CASCADE, randomized_cascade, randomized_maps
from vfrac.model.network import build_classifier


@pytest.fixture(scope="module")
def model():
    return build_classifier(32, arch="resnet-tiny")


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


@pytest.fixture(scope="module")
def varied():
    """A network away from zero-gamma (every residual branch passes a gradient), as if trained."""
    network = build_classifier(32, arch="resnet-tiny")
    draws = np.random.default_rng(0)
    for layer in network.layers:
        if layer.name.endswith("_bn"):
            layer.gamma.assign(draws.uniform(0.5, 1.5, layer.gamma.shape).astype("float32"))
    return network


@pytest.mark.slow
def test_one_explainer_loaded_with_each_stage_gives_that_stages_own_maps(varied):
    """The review loads every fold model and every stage of every random draw into one Explainer (one trace)."""
    from explain.cam import Explainer

    images = np.random.default_rng(0).normal(0, 50, (2, 32, 32, 3)).astype("float32")
    host = Explainer(build_classifier(32, arch="resnet-tiny"), "conv2_block3_out")  # another of the same architecture
    for _, randomized in randomized_cascade(varied, seed=5):
        maps, attribution = Explainer(randomized, "conv2_block3_out").explain(images, [1, 0])
        assert np.abs(attribution).max() > 0
        loaded_maps, loaded_attribution = host.load(randomized).explain(images, [1, 0])
        np.testing.assert_allclose(loaded_attribution, attribution, rtol=1e-4, atol=1e-6)
        for method in maps:
            np.testing.assert_allclose(loaded_maps[method], maps[method], atol=1e-5)


@pytest.mark.slow
def test_every_draw_starts_from_the_trained_weights_which_come_back_at_the_end(varied):
    from explain.cam import Explainer

    images = np.random.default_rng(1).normal(0, 50, (2, 32, 32, 3)).astype("float32")
    before = varied.get_weights()
    maps = randomized_maps(Explainer(varied, "conv2_block3_out"), varied, images, [1, 0], ("gradcam",),
                           seeds=(7, 7))
    assert set(maps) == {("gradcam", stage) for stage in CASCADE}
    assert maps[("gradcam", CASCADE[0])][0].max() > 0  # the head re-drawn, the trained layers below it
    for (_, stage), (first, second) in maps.items():  # the same seed from the same start: the same maps
        np.testing.assert_allclose(first, second, atol=1e-6, err_msg=stage)
    assert all(np.array_equal(a, b) for a, b in zip(varied.get_weights(), before, strict=True))
