"""The classifier: flat graph, weights from files, round trip, and it learns a toy task."""

import keras
import numpy as np
import pytest

from explain.cam import DEFAULT_LAYER
from vfrac.model.network import build_classifier, load_classifier


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_classifier(64, dropout=0.2)


def test_output_shape_and_flat_graph_with_reachable_last_conv(model):
    batch = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    probabilities = model.predict(batch, verbose=0)
    assert probabilities.shape == (2, 1) and np.all((probabilities > 0) & (probabilities < 1))
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # no nested sub-model
    cam_model = keras.Model(model.inputs, [model.get_layer(DEFAULT_LAYER).output, model.output])
    features, _ = cam_model(batch)
    assert features.shape == (2, 2, 2, 2048)
    assert model.get_layer("malignancy").activation.__name__ == "sigmoid"
    assert model.get_layer("conv1_bn").momentum == 0.9  # random weights: statistics must follow fast


def test_random_init_starts_every_residual_block_as_the_identity(model):
    closing = [layer for layer in model.layers if layer.name.endswith("_3_bn")]
    assert len(closing) == 16  # 3 + 4 + 6 + 3 blocks
    assert all(not np.any(np.asarray(layer.gamma)) for layer in closing)
    for name in ("conv1_bn", "conv2_block1_0_bn", "conv2_block1_1_bn", "conv5_block3_2_bn"):
        assert np.all(np.asarray(model.get_layer(name).gamma) == 1.0), name
    branch = keras.Model(model.inputs, [model.get_layer("conv3_block2_add").input[0],
                                        model.get_layer("conv3_block2_add").output])
    shortcut, added = branch(np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32"))
    assert np.allclose(shortcut, added)  # the residual branch adds nothing yet


def test_weights_load_from_a_local_backbone_file_and_a_whole_model_file(model, tmp_path):
    keras.utils.set_random_seed(1)
    backbone = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    backbone.save_weights(tmp_path / "resnet50_notop.weights.h5")
    loaded = build_classifier(64, weights=tmp_path / "resnet50_notop.weights.h5")
    for name in ("conv1_conv", "conv4_block2_2_conv", "conv5_block3_3_bn"):
        for a, b in zip(loaded.get_layer(name).get_weights(), backbone.get_layer(name).get_weights(), strict=True):
            assert np.array_equal(a, b)
    model.save_weights(tmp_path / "model.weights.h5")
    whole = build_classifier(64, weights=tmp_path / "model.weights.h5")
    batch = np.ones((1, 64, 64, 3), "float32")
    assert np.allclose(whole.predict(batch, verbose=0), model.predict(batch, verbose=0), atol=1e-6)
    (tmp_path / "junk.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="neither ResNet50 \\(no top\\) nor vfrac model weights"):
        build_classifier(64, weights=tmp_path / "junk.weights.h5")


def test_save_and_load_round_trip_gives_the_same_predictions(model, tmp_path):
    model.save(tmp_path / "model.keras")
    restored = load_classifier(tmp_path / "model.keras")
    batch = np.random.default_rng(3).normal(size=(3, 64, 64, 3)).astype("float32") * 50
    assert np.allclose(restored.predict(batch, verbose=0), model.predict(batch, verbose=0), atol=1e-6)


def test_arguments_are_checked_and_stages_freeze():
    with pytest.raises(ValueError, match="Received: weights='missing.h5'|received: weights='missing.h5'"):
        build_classifier(64, weights="missing.h5")
    with pytest.raises(ValueError, match="input_size must be an int >= 32"):
        build_classifier(16)
    frozen = build_classifier(32, freeze_stages=2)
    assert not frozen.get_layer("conv1_conv").trainable and not frozen.get_layer("conv2_block1_1_conv").trainable
    assert frozen.get_layer("conv3_block1_1_conv").trainable and frozen.get_layer("malignancy").trainable


def test_bfloat16_computes_in_bfloat16_keeps_float32_weights_and_trains():
    import tensorflow as tf

    model = build_classifier(32, dropout=0.5, precision="bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was
    conv = model.get_layer("conv2_block1_1_conv")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert model.get_layer("malignancy").compute_dtype == "float32"
    rng = np.random.default_rng(0)
    images = rng.normal(0, 50, (16, 32, 32, 3)).astype("float32")
    labels = (np.arange(16) % 2).astype("float32")
    with tf.GradientTape() as tape:  # one eager training step: dropout and BatchNorm in training mode
        probabilities = model(images, training=True)
        loss = keras.losses.BinaryCrossentropy()(labels[:, None], probabilities)
    gradients = tape.gradient(loss, model.trainable_variables)
    assert probabilities.dtype == "float32" and np.isfinite(float(loss))
    assert all(g.dtype == "float32" and np.all(np.isfinite(g.numpy())) for g in gradients)
    with pytest.raises(ValueError, match="precision must be one of"):
        build_classifier(32, precision="float16")


def test_the_tiny_resnet_keeps_resnet50s_stages_names_and_identity_start(model):
    tiny = build_classifier(64, arch="resnet-tiny")
    assert tiny.count_params() < model.count_params() / 20
    assert not any(isinstance(layer, keras.Model) for layer in tiny.layers)  # flat, like ResNet50's
    for name in ("conv1_conv", "conv2_block3_out", "conv3_block1_out", "conv5_block1_out"):
        assert tiny.get_layer(name).output.shape[1:3] == model.get_layer(name).output.shape[1:3], name
    closing = [layer for layer in tiny.layers if layer.name.endswith("_3_bn")]
    assert len(closing) == 6 and all(not np.any(np.asarray(layer.gamma)) for layer in closing)  # 3 + 1 + 1 + 1
    shortcut, added = keras.Model(tiny.inputs, [tiny.get_layer("conv2_block2_add").input[0],
                                                tiny.get_layer("conv2_block2_add").output])(np.ones((1, 64, 64, 3)))
    assert np.allclose(shortcut, added)
    assert not build_classifier(32, arch="resnet-tiny", freeze_stages=1).get_layer("conv1_conv").trainable
    with pytest.raises(ValueError, match="ImageNet weights exist for ResNet50 only"):
        build_classifier(64, arch="resnet-tiny", weights="imagenet")
    with pytest.raises(ValueError, match="arch must be one of"):
        build_classifier(64, arch="resnet18")
