"""Deletion and insertion by hand: a "model" that is the mean of a known region, whose curves can be written down."""

import numpy as np
import pytest

from explain.faithfulness import BLUR_FRACTION, area, blurred, curves, faithfulness

REGION = (slice(0, 2), slice(0, 2))  # the top-left 2 x 2 of a 4 x 4 input: a quarter of its 16 pixels


def region_mean(images):
    """The probability of malignancy: the mean of the region, all channels."""
    return np.asarray(images)[:, REGION[0], REGION[1]].mean(axis=(1, 2, 3))


def ones(n=1):
    return np.ones((n, 4, 4, 3), np.float32)


def on_region():
    cam = np.zeros((4, 4), np.float32)
    cam[REGION] = 1.0
    return cam[None]


@pytest.mark.parametrize(("steps", "deletion", "insertion"), [
    (4, [1, 0, 0, 0, 0], [0, 1, 1, 1, 1]),  # the region's 4 pixels are the first step's
    (2, [1, 0, 0], [0, 1, 1]),
    (16, [1, 0.75, 0.5, 0.25] + [0] * 13, [0, 0.25, 0.5, 0.75] + [1] * 13),  # one pixel a step
])
def test_a_map_on_the_evidence_deletes_it_first(steps, deletion, insertion):
    found = curves(region_mean, ones(), on_region(), [1], steps=steps, baseline=0.0)
    np.testing.assert_allclose(found[0], [deletion])
    np.testing.assert_allclose(found[1], [insertion])


def test_areas_by_hand_and_the_map_off_the_evidence_gives_the_opposite():
    on = faithfulness(region_mean, ones(), on_region(), [1], steps=4, baseline=0.0)
    assert on == pytest.approx({"deletion_auc": 0.125, "insertion_auc": 0.875, "slices": 1})  # 0.25 * (1 / 2)
    off = faithfulness(region_mean, ones(), 1.0 - on_region(), [1], steps=4, baseline=0.0)
    assert off == pytest.approx({"deletion_auc": 0.875, "insertion_auc": 0.125, "slices": 1})
    coarse = faithfulness(region_mean, ones(), on_region(), [1], steps=2, baseline=0.0)
    assert coarse["deletion_auc"] == pytest.approx(0.25)  # fewer steps: the curve falls over a wider first step


def test_a_benign_slice_follows_the_probability_of_benign():
    deletion, insertion = curves(region_mean, ones(), on_region(), [0], steps=4, baseline=0.0)
    np.testing.assert_allclose(deletion, [[0, 1, 1, 1, 1]])  # removing malignant evidence makes benign certain
    np.testing.assert_allclose(insertion, [[1, 0, 0, 0, 0]])


def test_areas_lie_in_the_unit_interval_and_every_step_is_one_batch():
    draws = np.random.default_rng(3)
    images = draws.normal(0, 1, (5, 8, 8, 3)).astype(np.float32)
    weights = draws.normal(0, 1, (8, 8, 3))
    calls = []

    def logistic(batch):
        calls.append(len(batch))
        return 1.0 / (1.0 + np.exp(-(batch * weights).sum(axis=(1, 2, 3))))

    deletion, insertion = curves(logistic, images, draws.random((5, 8, 8)), [1, 0, 1, 0, 1], steps=6)
    assert calls == [5 * 2 * 7] and deletion.shape == insertion.shape == (5, 7)
    assert ((0 <= area(deletion)) & (area(deletion) <= 1) & (0 <= area(insertion)) & (area(insertion) <= 1)).all()
    # both curves run between the image and the baseline
    np.testing.assert_allclose(deletion[:, 0], insertion[:, -1])
    np.testing.assert_allclose(deletion[:, -1], insertion[:, 0])


def test_for_a_linear_model_deletion_and_insertion_areas_sum_to_one_in_any_order():
    """With the image 1 and the baseline 0, what deletion has removed insertion has put back."""
    maps = np.random.default_rng(5).random((3, 4, 4))
    found = faithfulness(region_mean, ones(3), maps, [1, 1, 1], steps=16, baseline=0.0)
    assert found["deletion_auc"] + found["insertion_auc"] == pytest.approx(1.0)
    assert found["deletion_auc"] not in (pytest.approx(0.125), pytest.approx(0.875))  # a random map: in between


def test_a_flat_map_is_a_seeded_random_order():
    flat = np.zeros((200, 4, 4), np.float32)
    first = curves(region_mean, ones(200), flat, np.ones(200), steps=16, baseline=0.0)[0]
    again = curves(region_mean, ones(200), flat, np.ones(200), steps=16, baseline=0.0)[0]
    other = curves(region_mean, ones(200), flat, np.ones(200), steps=16, baseline=0.0, seed=1)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len({tuple(row) for row in first}) > 10  # the order differs from slice to slice
    assert area(first).mean() == pytest.approx(0.5, abs=0.03)  # on average, the evidence goes at an even pace


def test_the_default_baseline_is_the_blurred_input():
    image = np.zeros((1, 32, 32, 3), np.float32)
    image[0, :, 16:] = 100.0  # an edge
    image[0, :, :, 1] += 7.0  # and a channel of its own
    soft = blurred(image)
    assert soft.shape == image.shape and BLUR_FRACTION * 32 == 2.0
    np.testing.assert_allclose(soft[0, :, :2], image[0, :, :2], atol=1e-3)  # far from the edge, unchanged
    np.testing.assert_allclose(soft.mean(axis=(1, 2)), image.mean(axis=(1, 2)), rtol=1e-3)  # intensity kept
    assert 40 < soft[0, 5, 16, 0] < 60 and 0 < soft[0, 5, 14, 0] < 25  # the edge spread over a few pixels
    np.testing.assert_allclose(soft[..., 1] - soft[..., 0], 7.0, atol=1e-3)  # channels blurred apart
    on_edge = lambda batch: batch[:, :, 15:17, 0].mean(axis=(1, 2)) / 100  # noqa: E731
    deletion, insertion = curves(on_edge, image, np.zeros((1, 32, 32)), [1], steps=4)
    assert deletion[0, 0] == pytest.approx(0.5) and deletion[0, -1] == pytest.approx(on_edge(soft)[0])
    assert insertion[0, 0] == pytest.approx(on_edge(soft)[0])


@pytest.mark.parametrize(("maps", "classes", "steps", "message"), [
    (np.zeros((1, 3, 3)), [1], 4, "need maps"),
    (np.zeros((1, 4, 4)), [1, 0], 4, "need maps"),
    (np.zeros((1, 4, 4)), [1], 0, "steps must be"),
])
def test_bad_inputs_are_refused(maps, classes, steps, message):
    with pytest.raises(ValueError, match=message):
        curves(region_mean, ones(), maps, classes, steps=steps)
