"""A faster input gradient for the model's convolutions on TensorFlow's CPU kernels.

TensorFlow's `Conv2DBackpropInput` runs at 3-4 GFLOP/s on the 2 x 2 maps of conv5 at
input 64 (106 ms for a 3 x 3 convolution of 512 channels and a batch of 16, whose
forward pass takes 3.5 ms, on a 2-core AMD EPYC), and made most of a demo training
step and of every Grad-CAM map's backward pass. The same gradient is a forward
convolution: for stride 1, an odd kernel and "same" padding, the output's gradient
convolved with the kernel flipped in space and its channels swapped. Strided
convolutions keep TensorFlow's gradient: with the fast one on ResNet50's strided 1 x 1
projections too, fits of the same seed in two processes parted at the rounding level
after about 90 training steps; without it, they did not (docs/reproducibility.md). The numbers are those
of TensorFlow's own gradient up to float rounding; the model, its weights and what it
saves are unchanged (a saved model is plain Keras).

It was measured to pay on CPUs only, so "auto" uses it on TensorFlow without a GPU;
"fast" and "stock" force either way (`vfrac.model.network.active_conv_gradient`,
`experiments.cv --conv-gradient`).
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf


def use_fast_conv_gradients(model: keras.Model) -> int:
    """Give the model's eligible Conv2D layers the faster gradient (TensorFlow backend); returns how many."""
    if keras.backend.backend() != "tensorflow":
        return 0
    changed = 0
    for layer in model.layers:
        if type(layer) is keras.layers.Conv2D and _eligible(layer):
            layer.convolution_op = functools.partial(_convolution, padding=layer.padding.upper())
            changed += 1
    return changed


def _eligible(layer: keras.layers.Conv2D) -> bool:
    (height, width), (stride, stride_w) = layer.kernel_size, layer.strides
    if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
        return False
    if height != width or stride != 1 or stride_w != 1 or height % 2 == 0:
        return False
    return height == 1 or layer.padding == "same"  # a 1 x 1 kernel pads nothing


def _convolution(inputs, kernel, padding: str):
    """`tf.nn.conv2d` whose input gradient is computed as a forward convolution."""
    kernel = tf.convert_to_tensor(kernel)  # the variable's read stays on the tape: its gradient flows

    @tf.custom_gradient
    def convolve(images, weights):
        # Flipped and swapped here, in the forward pass, not in `gradient`: taken there, it raced with the
        # optimizer's update of the same kernel (TensorFlow orders the update after the variable's read, not
        # after every later use of what it read). With a host call in the step, fits of the same seed in two
        # processes then parted from the second step; taken here, they did not (docs/reproducibility.md).
        swapped = tf.transpose(tf.reverse(weights, [0, 1]), (0, 1, 3, 2))

        def gradient(upstream):
            images_gradient = tf.nn.conv2d(upstream, swapped, 1, "SAME")
            weights_gradient = tf.raw_ops.Conv2DBackpropFilter(
                input=images, filter_sizes=tf.shape(weights), out_backprop=upstream,
                strides=[1, 1, 1, 1], padding=padding)
            return images_gradient, weights_gradient

        return tf.nn.conv2d(images, weights, 1, padding), gradient

    return convolve(inputs, kernel)
