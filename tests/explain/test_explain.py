"""Class-activation maps, their mapping onto the CT, attention numbers and the sanity check."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from explain.attention import attention, mask_on_input, summarize
from explain.cam import CAFFE_MEAN_BGR, METHODS, Explainer
from explain.overlay import cam_on_slice, crop_overlay, slice_overlay
from explain.sanity import CASCADE, randomized_maps, rank_correlation, sanity_check
from vfrac.data.crops import input_to_slice
from vfrac.model.network import build_classifier
from vfrac.model.train import Trainer
from vfrac.stats.metrics import auc

SIZE, SQUARE, LAYER = 64, 32, "conv3_block1_out"  # 8 x 8 maps: the square spans 4 x 4 cells


def squares(count, seed):
    """Noise, and in every second image a bright square at a random place; its masks."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 5.0, (count, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.arange(count) % 2
    masks = np.zeros((count, SIZE, SIZE), dtype=bool)
    for i, (row, col) in enumerate(rng.integers(0, SIZE - SQUARE, (count, 2))):
        if labels[i]:
            images[i, row:row + SQUARE, col:col + SQUARE] += 100.0
            masks[i, row:row + SQUARE, col:col + SQUARE] = True
    return images, labels.astype(np.float32), masks


def dataset(images, labels, shuffle=False):
    data = tf.data.Dataset.from_tensor_slices((images, labels))
    return (data.shuffle(len(images), seed=0) if shuffle else data).batch(32)


@pytest.fixture(scope="module")
def toy():
    """A classifier trained by vfrac's Trainer to tell a bright square from noise: (the fit's history, the model,
    held-out images with a square, their masks, AUC on the held-out images). The tiny ResNet (ResNet50's stages and
    layer names) learns it in a seventh of ResNet50's time; the other tests here explain ResNet50 itself."""
    keras.utils.set_random_seed(0)
    images, labels, _ = squares(128, seed=1)
    test_images, test_labels, test_masks = squares(32, seed=2)
    trainer = Trainer(lambda: build_classifier(SIZE, dropout=0.1, arch="resnet-tiny"), ema_momentum=0.5)  # 16 steps
    history = trainer.fit(dataset(images, labels, shuffle=True), dataset(test_images, test_labels), epochs=4,
                          learning_rate=1e-3, warmup_epochs=0)
    model = trainer.model
    held_out_auc = auc(test_labels, model.predict(test_images, verbose=0)[:, 0])
    positive = test_labels == 1
    return history, model, test_images[positive], test_masks[positive], held_out_auc


@pytest.fixture(scope="module")
def explainer(toy):
    """The detector's Explainer at LAYER: one traced gradient pass for the module."""
    return Explainer(toy[1], LAYER)


@pytest.mark.slow
def test_a_short_training_learns_the_square_with_averaged_weights_and_recalibrated_batchnorm(toy):
    history, _, _, _, held_out_auc = toy
    assert held_out_auc > 0.9
    assert 1 <= history["best_epoch"] <= len(history["loss"]) == 4 and len(history["val_auc"]) == 4


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_maps_of_a_square_detector_land_on_the_square(toy, explainer, method):
    _, _, images, masks, _ = toy
    classes = np.ones(len(images), dtype=int)
    maps = explainer.maps(images, method, classes)
    assert np.allclose(explainer.maps(images, method, classes, batch_size=3), maps, atol=1e-3)  # batches of any size
    measured = [attention(cam, mask) for cam, mask in zip(maps, masks, strict=True)]
    assert np.mean([m["energy_fraction"] for m in measured]) > 0.4  # the square is a quarter of the image
    assert np.mean([m["pointing_hit"] for m in measured]) >= 0.9


@pytest.mark.slow
def test_both_classes_maps_from_one_pass_equal_a_pass_for_each_class(toy, explainer):
    """The other class's score has the negated gradient: its Grad-CAM and HiResCAM need no pass of their own."""
    _, _, images, _, _ = toy
    classes = np.array([1, 0, 1, 1, 0, 0])
    methods = ("gradcam", "hirescam", "layercam")
    maps, other, shares = explainer.explain_both(images[:6], classes, methods)
    alone, alone_shares = explainer.explain(images[:6], classes, methods)
    against = explainer.explain(images[:6], 1 - classes, methods, attribution=False)[0]
    for method in methods:
        np.testing.assert_allclose(maps[method], alone[method], atol=1e-5)
        np.testing.assert_allclose(other[method], against[method], atol=1e-4)
        assert np.abs(other[method] - maps[method]).max() > 0.5, method  # the two classes' evidence lies apart
    np.testing.assert_allclose(shares, alone_shares, rtol=1e-5)


@pytest.mark.slow
def test_every_method_returns_maps_in_unit_range(toy, explainer):
    _, _, images, _, _ = toy
    for method in METHODS:
        maps = explainer.maps(images[:2], method, [1, 0], max_n=4)
        assert maps.shape == (2, SIZE, SIZE) and maps.min() >= 0.0 and maps.max() <= 1.0, method
    with pytest.raises(ValueError, match="method must be one of"):
        explainer.maps(images[:1], "saliency", [1])
    with pytest.raises(ValueError, match="nothing to localise"):
        Explainer(build_classifier(32), "conv5_block3_out")  # 1 x 1 maps


@pytest.mark.slow
def test_randomised_networks_give_different_maps(toy, explainer):
    _, model, images, _, _ = toy
    classes = np.ones(8, dtype=int)  # one Explainer, one traced pass, for every stage of every draw
    trained = explainer.explain(images[:8], classes, ("gradcam", "hirescam"))[0]
    randomized = randomized_maps(explainer, model, images[:8], classes, tuple(trained))
    np.testing.assert_allclose(explainer.load(model).explain(images[:8], classes, ("gradcam",))[0]["gradcam"],
                               trained["gradcam"], atol=1e-5)  # the trained weights are back
    rows = sanity_check(trained, randomized)
    assert {r["randomized_to"] for r in rows} == set(CASCADE) and all(r["draws"] == 3 for r in rows)
    full = {r["method"]: r for r in rows if r["randomized_to"] == "conv1"}
    assert full["hirescam"]["spearman_mean"] < 0.5 and not full["hirescam"]["flagged"], full
    # A "randomised" network that is the trained one is caught.
    same = sanity_check(trained, {(m, "conv1"): [trained[m]] for m in trained})
    assert all(r["flagged"] and r["spearman_mean"] == pytest.approx(1.0) for r in same)


@pytest.mark.slow
def test_slice_attribution_is_zero_for_a_black_slice(toy, explainer):
    _, _, images, _, _ = toy
    black_first = images[:2].copy()
    black_first[..., 2] = -CAFFE_MEAN_BGR[2]  # BGR input: channel 2 is slice z-1; 0 after the window
    attribution = explainer.slice_attribution(black_first, [1, 1])
    assert attribution.shape == (2, 3)
    assert np.all(attribution[:, 0] == 0.0) and np.all(np.abs(attribution[:, 1:]).sum(axis=1) > 0)


def test_a_map_of_the_whole_input_lands_on_the_roi_square():
    box, context, cache, size = (100, 150, 60), 0.2, 192, 64
    transform = input_to_slice(box, context, cache, size)
    whole, covered = cam_on_slice(np.ones((size, size), np.float32), transform, (512, 512))
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    assert abs(rows[0] - 100) <= 1 and abs(rows[-1] - 159) <= 1
    assert abs(cols[0] - 150) <= 1 and abs(cols[-1] - 209) <= 1
    quarter = np.zeros((size, size), np.float32)
    quarter[:32, 32:] = 1.0  # top right of the input: rows 100..129, columns 180..209 of the slice
    placed, _ = cam_on_slice(quarter, transform, (512, 512))
    hot = placed > 0.5
    rows, cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
    assert abs(rows[0] - 100) <= 1 and abs(rows[-1] - 129) <= 1
    assert abs(cols[0] - 180) <= 1 and abs(cols[-1] - 209) <= 1
    # and back: a full-slice mask of that quarter is the quarter on the input
    mask = np.zeros((512, 512), bool)
    mask[100:130, 180:210] = True
    assert (mask_on_input(mask, transform, size) == quarter.astype(bool)).mean() > 0.97


def test_overlays_are_images_with_bar_and_caption():
    cam = np.zeros((64, 64), np.float32)
    cam[10:20, 10:20] = 1.0
    crop = crop_overlay(np.full((64, 64), 128, np.uint8), cam, "VF0001 p 0.91")
    whole = slice_overlay(np.zeros((256, 256), np.float32), cam, input_to_slice((50, 60, 40), 0.2, 192, 64),
                          "VF0001 p 0.91")
    assert crop.ndim == 3 and crop.shape[0] > 384 and whole.shape[0] > 256
    # 64 -> 384 px: the hot square is rows and columns 60-120; outside it the grey shows untouched,
    # inside it 45 % grey + 55 % of jet's top colour (BGR 0, 0, 128)
    hot = np.round(0.45 * 128 + 0.55 * np.array([0, 0, 128])).astype(np.uint8)
    np.testing.assert_array_equal(crop[300, 300], [128, 128, 128])
    np.testing.assert_array_equal(crop[90, 90], hot)
    # the whole slice: 0 HU is grey 71 (500 / 1800 of 255) away from the crop; the crop's square outlined white
    np.testing.assert_array_equal(whole[5, 5], [71, 71, 71])
    assert (whole[:256, :256] == 255).all(axis=-1).any()


def test_attention_numbers_by_hand():
    cam = np.zeros((4, 4))
    cam[0, 0], cam[3, 3] = 1.0, 3.0
    mask = np.zeros((4, 4), bool)
    mask[2:, 2:] = True  # a quarter of the crop, holding 3 of the 4 units of energy
    measured = attention(cam, mask, tolerance=0.0)
    assert measured == {"energy_fraction": 0.75, "area_fraction": 0.25, "ratio": 3.0, "pointing_hit": 1.0}
    elsewhere = np.zeros((4, 4), bool)
    elsewhere[0, 0] = True
    assert attention(cam, elsewhere, tolerance=0.0) == {
        "energy_fraction": 0.25, "area_fraction": 1 / 16, "ratio": 4.0, "pointing_hit": 0.0}
    # the maximum 3 pixels from the mask hits with a 4-pixel tolerance (15/224 of 64), not with none
    big, near = np.zeros((64, 64)), np.zeros((64, 64), bool)
    big[10, 10] = 1.0
    near[10, 13:20] = True
    assert attention(big, near)["pointing_hit"] == 1.0 and attention(big, near, tolerance=0.0)["pointing_hit"] == 0.0
    absent = attention(cam, np.zeros((4, 4), bool))
    assert absent["area_fraction"] == 0.0 and math.isnan(absent["ratio"]) and math.isnan(absent["pointing_hit"])
    with pytest.raises(ValueError, match="differ in shape"):
        attention(cam, np.zeros((3, 3), bool))


def test_summary_groups_by_feature_class_and_call():
    def row(pid, energy, area, hit):
        return {"patient_id": pid, "method": "gradcam", "feature": "mass", "energy_fraction": energy,
                "area_fraction": area, "ratio": energy / area if area else math.nan, "pointing_hit": hit}

    rows = [row("a", 0.6, 0.2, 1.0), row("a", 0.2, 0.2, 0.0), row("b", 0.1, 0.1, 0.0), row("b", 0.0, 0.0, math.nan)]
    summary = summarize(rows, {"a": ("malignant", "correct"), "b": ("benign", "incorrect")})
    by_patient = {(s["true_class"], s["call"]): s for s in summary}
    first = by_patient[("malignant", "correct")]
    assert first["slices"] == 2 and first["energy_fraction"] == pytest.approx(0.4)
    assert first["ratio"] == pytest.approx(2.0) and first["pointing_hit_rate"] == 0.5
    assert by_patient[("benign", "incorrect")]["slices"] == 1  # the slice without the feature is left out


def test_rank_correlation_edge_cases():
    a = np.arange(16.0).reshape(4, 4)
    assert rank_correlation(a, a) == pytest.approx(1.0) and rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.zeros((4, 4))) == 0.0 and math.isnan(rank_correlation(a * 0, a * 0))


def test_the_one_gradient_pass_gives_tf_keras_vis_gradcam_and_the_eager_hirescam_and_attribution():
    """Grad-CAM, HiResCAM and the attribution come from one traced pass: the same numbers as computed apart."""
    from explain.cam import _class_score, _upsample_and_scale

    keras.utils.set_random_seed(3)
    model = build_classifier(32)
    for layer in model.layers:  # away from zero-gamma, so every residual branch has a gradient
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(np.random.default_rng(0).uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
    images = np.random.default_rng(1).normal(0.0, 60.0, (5, 32, 32, 3)).astype(np.float32)
    classes = np.array([1, 0, 1, 1, 0])
    explainer = Explainer(model, "conv2_block3_out")
    maps, attribution = explainer.explain(images, classes, ("gradcam", "hirescam"), batch_size=2)
    reference = explainer._tf_keras_vis(images, "gradcam", classes, 32)  # tf-keras-vis, eager
    expected = np.stack([_upsample_and_scale(np.maximum(m, 0.0), (32, 32)) for m in reference])
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(maps["gradcam"], expected, atol=1e-4)
    x = tf.constant(images)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        activation, output = explainer.gradients(x, training=False)
        score = _class_score(output, classes)
    gradient = tape.gradient(score, activation).numpy()
    hires = np.maximum((activation.numpy() * gradient).sum(axis=-1), 0.0)
    np.testing.assert_allclose(maps["hirescam"], [_upsample_and_scale(m, (32, 32)) for m in hires], atol=1e-4)
    by_slice = (tape.gradient(score, x).numpy()[..., ::-1] * (images + CAFFE_MEAN_BGR)[..., ::-1]).sum(axis=(1, 2))
    np.testing.assert_allclose(attribution, by_slice, rtol=1e-4, atol=1e-4 * np.abs(by_slice).max())
    assert explainer.maps(images[:2], "hirescam", classes[:2]).shape == (2, 32, 32)
