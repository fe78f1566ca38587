"""The faster convolution gradient equals TensorFlow's own, and the model keeps what it saves."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vfrac.model.conv_gradient import use_fast_conv_gradients
from vfrac.model.network import active_conv_gradient, build_classifier, load_classifier


def _gradients(layer, images):
    with tf.GradientTape() as tape:
        tape.watch(images)
        # A weighted sum, so every output pixel's gradient differs.
        output = layer(images)
        loss = tf.reduce_sum(output * tf.reshape(tf.range(tf.size(output), dtype=output.dtype) % 7, output.shape))
    return tape.gradient(loss, [images, layer.kernel])


@pytest.mark.parametrize("size, kernel, stride, padding", [
    (2, 3, 1, "same"),    # conv5's 3 x 3 at input 64
    (5, 3, 1, "same"),
    (4, 1, 1, "valid"),   # a 1 x 1 kernel pads nothing
    (7, 1, 1, "same"),
])
def test_input_and_kernel_gradients_equal_tensorflows_own(size, kernel, stride, padding):
    keras.utils.set_random_seed(0)
    images = tf.constant(np.random.default_rng(0).normal(size=(2, size, size, 6)).astype("float32"))
    stock = keras.layers.Conv2D(5, kernel, strides=stride, padding=padding)
    stock.build(images.shape)
    fast = keras.layers.Conv2D(5, kernel, strides=stride, padding=padding)
    fast.build(images.shape)
    fast.set_weights(stock.get_weights())
    model = keras.Sequential([fast])
    assert use_fast_conv_gradients(model) == 1
    np.testing.assert_allclose(fast(images), stock(images), rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(_gradients(fast, images), _gradients(stock, images), strict=True):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer", [
    keras.layers.Conv2D(4, 7, strides=2),                  # ResNet50's conv1
    keras.layers.Conv2D(4, 2, padding="same"),             # even kernel: "same" pads unevenly
    keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same"),
    keras.layers.Conv2D(4, 3, padding="valid"),
    keras.layers.Conv2D(4, 3, strides=2, padding="same"),
    keras.layers.Conv2D(4, 1, strides=2),                  # the strided projections of conv3..conv5
])
def test_other_convolutions_keep_tensorflows_gradient(layer):
    layer.build((1, 9, 9, 3))
    assert use_fast_conv_gradients(keras.Sequential([layer])) == 0
    assert "convolution_op" not in vars(layer)


def test_the_model_trains_with_the_same_gradients_and_saves_plain_keras(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_classifier(32, arch="resnet-tiny", dropout=0.0)
    # Closing BatchNorms start at zero (the identity start); open them so every branch carries gradient.
    for variable in model.trainable_variables:
        if variable.path.endswith("gamma"):
            variable.assign(np.full(variable.shape, 0.5, "float32"))
    model.save(tmp_path / "model.keras")
    stock = keras.models.load_model(tmp_path / "model.keras", compile=False)  # Keras' own layers, unchanged
    fast = load_classifier(tmp_path / "model.keras")
    patched = [layer.name for layer in fast.layers if "convolution_op" in vars(layer)]
    convolutions = [layer for layer in fast.layers if isinstance(layer, keras.layers.Conv2D)]
    strided = [layer.name for layer in convolutions if tuple(layer.strides) != (1, 1)]
    assert len(strided) == 7 and len(patched) == len(convolutions) - 7  # all but conv1 and the six projections
    assert not any("convolution_op" in vars(layer) for layer in stock.layers)
    images = tf.constant(np.random.default_rng(1).normal(0, 50, (4, 32, 32, 3)).astype("float32"))
    labels = tf.constant([[0.0], [1.0], [1.0], [0.0]])
    loss = keras.losses.BinaryCrossentropy()

    def gradients(network):
        with tf.GradientTape() as tape:
            value = loss(labels, network(images, training=True))
        return tape.gradient(value, network.trainable_variables)

    for variable, mine, theirs in zip(fast.trainable_variables, gradients(fast), gradients(stock), strict=True):
        scale = float(tf.reduce_max(tf.abs(theirs)))
        if variable.path.endswith("_conv/bias"):
            continue  # a bias before training-mode BatchNorm has no gradient: both are rounding noise
        np.testing.assert_allclose(mine, theirs, atol=1e-4 * scale + 1e-7, err_msg=variable.path)


def test_the_setting_picks_the_gradient_and_auto_is_fast_on_a_cpu(tmp_path):
    assert not tf.config.list_logical_devices("GPU")  # this suite runs on CPUs
    assert active_conv_gradient("auto") == "fast" and active_conv_gradient("stock") == "stock"
    model = build_classifier(32, arch="resnet-tiny")
    model.save(tmp_path / "model.keras")
    for built in (build_classifier(32, arch="resnet-tiny", conv_gradient="stock"),
                  load_classifier(tmp_path / "model.keras", conv_gradient="stock")):
        assert not any("convolution_op" in vars(layer) for layer in built.layers)
    assert any("convolution_op" in vars(layer) for layer in model.layers)
    with pytest.raises(ValueError, match="conv_gradient must be one of"):
        active_conv_gradient("quick")

