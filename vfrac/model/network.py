"""ResNet50 and a sigmoid head as one flat functional graph, so CAM tools can reach any layer.

`arch="resnet-tiny"` builds a ResNet of the same stages and layer names (conv1,
conv2_block1..3, conv3_block1 .. conv5_block1, the same `_out` layers) at a quarter of
the width: it traces in a fraction of ResNet50's time, for checking a cohort and the
whole flow in minutes (and the command's tests), not for results.

The backbone is built on the head's own input (`input_tensor=`), never called as a
nested sub-model, which is what breaks Grad-CAM tools ("Graph disconnected").
Pretrained weights come only from an explicit argument: "imagenet" (Keras downloads
them) or a weights file already on disk, such as RadImageNet's ResNet50.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
from keras import ops

RANDOM_INIT_BN_MOMENTUM = 0.9
STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")
RESIDUAL_LAST_BN = re.compile(r"conv\d_block\d+_3_bn")  # the BatchNorm closing each residual branch
ARCHITECTURES = ("resnet50", "resnet-tiny")
TINY_BLOCKS, TINY_WIDTH = (3, 1, 1, 1), 16  # blocks per stage conv2..conv5 (ResNet50: 3, 4, 6, 3; width 64)
BN_EPSILON = 1.001e-5  # Keras' ResNet50's


PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}  # name -> Keras dtype policy
CONV_GRADIENTS = ("auto", "fast", "stock")  # the convolutions' input gradient (`active_conv_gradient`)


def build_classifier(input_size: int = 224, weights=None, dropout: float = 0.3, freeze_stages: int = 0,
                     precision: str = "float32", arch: str = "resnet50", conv_gradient: str = "auto") -> keras.Model:
    """ResNet50 -> global average pooling -> dropout -> Dense(1, sigmoid) named "malignancy".

    The dropout rate is a variable (`VariableDropout`); `vfrac.model.train.Trainer` sets it per fit.

    weights: None (random), "imagenet", or a path to a no-top ResNet50 weights file or
    to weights of this whole model. freeze_stages: how many of ResNet50's five stages,
    from the input, stay frozen (for pretrained weights). precision "bfloat16" computes
    in bfloat16 with float32 weights and a float32 output (GPUs, CPUs with AMX); no loss
    scaling is needed, unlike float16. arch: "resnet50" or "resnet-tiny" (random or
    whole-model weights only). conv_gradient: "auto", "fast" or "stock" (`vfrac.model.conv_gradient`).
    """
    if not isinstance(input_size, int) or input_size < 32:
        raise ValueError(f"input_size must be an int >= 32, received: input_size={input_size!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), received: dropout={dropout!r}")
    if not 0 <= freeze_stages <= len(STAGES):
        raise ValueError(f"freeze_stages must be 0..{len(STAGES)}, received: freeze_stages={freeze_stages!r}")
    weights_file = None
    if weights not in (None, "imagenet"):
        weights_file = Path(weights)
        if not weights_file.is_file():
            raise ValueError(f"weights must be None, 'imagenet' or an existing weights file, "
                             f"received: weights={weights!r}")
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, received: arch={arch!r}")
    if arch != "resnet50" and weights == "imagenet":
        raise ValueError(f"ImageNet weights exist for ResNet50 only, received: arch={arch!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, received: precision={precision!r}")
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[precision])
    try:
        inputs = keras.Input((input_size, input_size, 3), name="image")
        if arch == "resnet50":
            backbone = keras.applications.ResNet50(include_top=False, input_tensor=inputs,
                                                   weights="imagenet" if weights == "imagenet" else None)
        else:
            backbone = keras.Model(inputs, _tiny_resnet(inputs), name="resnet_tiny")
        pooled = keras.layers.GlobalAveragePooling2D(name="pool")(backbone.output)
        dropped = VariableDropout(dropout, name="dropout")(pooled)
        output = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="malignancy")(dropped)
        model = keras.Model(inputs, output, name=f"vfrac_{arch.replace('-', '_')}")
    finally:
        keras.config.set_dtype_policy(previous_policy)
    if weights is None:
        _prepare_random_init(model)
    if weights_file is not None:
        _load_weights(model, backbone, weights_file)
    frozen = STAGES[:freeze_stages]
    for layer in model.layers:
        if layer.name.startswith(frozen) and frozen:
            layer.trainable = False
    _fast_gradients(model, conv_gradient)
    return model


@keras.saving.register_keras_serializable(package="vfrac")
class VariableDropout(keras.layers.Layer):
    """Dropout whose rate is a variable: one compiled training step serves every rate a tuner tries."""

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), received: rate={rate!r}")
        self.initial_rate, self.seed = float(rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        self.rate = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial_rate),
                                    trainable=False, name="rate")

    def call(self, inputs, training=False):
        if not training:
            return inputs
        keep = 1.0 - ops.cast(self.rate, "float32")  # drawn and compared in float32 under any policy
        kept = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator) < keep
        return ops.where(kept, inputs / ops.cast(keep, inputs.dtype), ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        rate = float(ops.convert_to_numpy(self.rate)) if self.built else self.initial_rate
        return super().get_config() | {"rate": rate, "seed": self.seed}


def _tiny_resnet(inputs):
    """Keras' ResNet50 stem and bottleneck blocks, with TINY_BLOCKS and TINY_WIDTH."""
    layers = keras.layers
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(TINY_WIDTH, 7, strides=2, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, blocks in enumerate(TINY_BLOCKS):
        for block in range(blocks):
            x = _bottleneck(x, TINY_WIDTH * 2 ** stage, stride=2 if stage and not block else 1,
                            project=not block, name=f"{STAGES[stage + 1]}_block{block + 1}")
    return x


def _bottleneck(x, filters: int, stride: int, project: bool, name: str):
    """Keras' ResNet v1 block (1x1, 3x3, 1x1 convolutions plus the shortcut), with its layer names."""
    layers = keras.layers

    def conv_bn(tensor, width, kernel, part, strides=1):
        tensor = layers.Conv2D(width, kernel, strides=strides, padding="same", name=f"{name}_{part}_conv")(tensor)
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_{part}_bn")(tensor)

    shortcut = conv_bn(x, 4 * filters, 1, 0, stride) if project else x
    x = layers.Activation("relu", name=f"{name}_1_relu")(conv_bn(x, filters, 1, 1, stride))
    x = layers.Activation("relu", name=f"{name}_2_relu")(conv_bn(x, filters, 3, 2))
    x = layers.Add(name=f"{name}_add")([shortcut, conv_bn(x, 4 * filters, 1, 3)])
    return layers.Activation("relu", name=f"{name}_out")(x)


def load_classifier(path, conv_gradient: str = "auto") -> keras.Model:
    """A saved vfrac model, for prediction: its custom layers are registered by importing this module."""
    model = keras.models.load_model(path, compile=False)
    _fast_gradients(model, conv_gradient)
    return model


def active_conv_gradient(mode: str = "auto") -> str:
    """"fast" or "stock": the convolutions' input gradient `mode` gives on this backend and machine.

    TensorFlow's own gradient of small convolutions is slow on CPUs (`vfrac.model.conv_gradient`);
    "auto" replaces it on TensorFlow without a GPU, the only place it was measured to pay.
    """
    if mode not in CONV_GRADIENTS:
        raise ValueError(f"conv_gradient must be one of {CONV_GRADIENTS}, received: conv_gradient={mode!r}")
    if keras.backend.backend() != "tensorflow":
        if mode == "fast":
            raise ValueError(f"the fast convolution gradient exists for TensorFlow only, not {keras.backend.backend()}")
        return "stock"
    if mode == "auto":
        import tensorflow as tf  # imported here: Keras may run on JAX where TensorFlow is not installed

        return "stock" if tf.config.list_logical_devices("GPU") else "fast"
    return mode


def _fast_gradients(model: keras.Model, mode: str) -> None:
    if active_conv_gradient(mode) == "fast":
        from vfrac.model.conv_gradient import use_fast_conv_gradients  # TensorFlow only (see above)

        use_fast_conv_gradients(model)


def _prepare_random_init(model: keras.Model) -> None:
    """Settings that let a randomly initialised ResNet50 learn in a few hundred steps.

    Each residual block's last BatchNorm starts with gamma = 0, so every block starts as
    the identity and the network as a shallow one (Goyal et al. 2017, "zero-gamma"):
    on the synthetic cohort the training loss then falls from the first epoch, where
    with Keras' gamma = 1 it had barely moved after 12 (patient AUC 0.89 against 0.56
    on the same fold). Keras' BatchNorm momentum of 0.99 would leave the inference
    statistics near their initial values for hundreds of steps; 0.9 tracks them in tens.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = RANDOM_INIT_BN_MOMENTUM
            if RESIDUAL_LAST_BN.fullmatch(layer.name):
                layer.gamma.assign(keras.ops.zeros(layer.gamma.shape, layer.gamma.dtype))


def _load_weights(model: keras.Model, backbone: keras.Model, path: Path) -> None:
    """A whole-model file goes into the model; a no-top ResNet50 file into the backbone.

    The whole model is tried first: its file would also partly fit the backbone.
    """
    errors = []
    for target in (model, backbone):
        try:
            target.load_weights(str(path))
            return
        except Exception as error:  # Keras raises several types for mismatched files
            errors.append(f"{target.name}: {error}")
    raise ValueError(f"{path}: neither ResNet50 (no top) nor vfrac model weights ({'; '.join(errors)})")
