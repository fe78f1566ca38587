"""Class-activation maps for a fold model's sigmoid output, as arrays (no plotting here).

Grad-CAM, Grad-CAM++, Score-CAM (Faster-Score-CAM's `max_N`) and LayerCAM come from
tf-keras-vis; HiResCAM (gradient x activation summed over channels, no averaging of
the gradient) is computed here: for ResNet50 + global average pooling + one dense
unit it is the exact contribution of each location to the logit.

Grad-CAM, HiResCAM and the slices' attribution all need one thing, the gradient of
the class score with respect to the layer's activation (and to the input): `explain`
gets it from one traced forward+backward pass per batch and derives all three from
it, where tf-keras-vis (eager, one pass per method) took three. Grad-CAM computed so
equals tf-keras-vis's to float precision (tests/explain/test_explain.py); the other
tf-keras-vis methods run through tf-keras-vis.

tf-keras-vis scores softmax outputs (Score-CAM applies a softmax itself), which is
constant for a single sigmoid unit. Maps are therefore taken from a two-logit view
of the same network, [-z/2, z/2] with z the malignancy logit: its softmax is
(1 - sigmoid(z), sigmoid(z)), and class 1's logit has the gradient of z. Each image
is explained for a class (by default the class the model called), so a benign call
shows where the evidence for benign lay.
"""

from __future__ import annotations

import math

import cv2
import keras
import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam, GradcamPlusPlus
from tf_keras_vis.layercam import Layercam
from tf_keras_vis.scorecam import Scorecam

from explain.methods import DEFAULT_LAYER, METHODS
from vfrac.data.pipeline import CAFFE_MEAN_BGR as PIPELINE_MEAN_BGR
from vfrac.errors import InputError

FINE_LAYER = "conv4_block6_out"  # 14 x 14 at input 224
PIXELS_PER_BATCH = 64 * 64 * 64
CAFFE_MEAN_BGR = np.array(PIPELINE_MEAN_BGR, dtype=np.float32)  # ResNet50's preprocess_input


def called_classes(probabilities, threshold: float = 0.5) -> np.ndarray:
    """1 where the model called malignant, 0 where benign: the class each map explains."""
    return (np.asarray(probabilities, dtype=float) >= threshold).astype(np.int32)


def windowed_rgb(images: np.ndarray) -> np.ndarray:
    """Undo ResNet50's preprocessing: (n, S, S, 3) in 0..255, channels = slices z-1, z, z+1."""
    return (np.asarray(images, dtype=np.float32) + CAFFE_MEAN_BGR)[..., ::-1]


def slice_shares(attribution: np.ndarray) -> list[float]:
    """Each slice's share (z-1, z, z+1) of one image's absolute attribution (`Explainer.slice_attribution`)."""
    magnitude = np.abs(attribution)
    total = magnitude.sum()
    return [float(v / total) if total > 0 else math.nan for v in magnitude]


class Explainer:
    """The maps of one trained model at one layer; built once, used for many batches."""

    def __init__(self, model: keras.Model, layer: str = DEFAULT_LAYER):
        names = {layer.name for layer in model.layers}
        if layer not in names:
            raise InputError(f"layer {layer!r} is not in the model; try {DEFAULT_LAYER!r} or {FINE_LAYER!r}")
        self.layer = layer
        self.two_logits = _two_logit_model(model)
        self.gradients = keras.Model(self.two_logits.inputs,
                                     [self.two_logits.get_layer(layer).output, self.two_logits.output])
        grid = tuple(self.gradients.outputs[0].shape[1:3])
        if max(grid) <= 1:
            raise InputError(f"layer {layer!r} gives {grid[0]} x {grid[1]} maps at input "
                             f"{model.input_shape[1]}: nothing to localise; choose an earlier layer "
                             f"such as {FINE_LAYER!r} or a larger input")

    def load(self, model: keras.Model) -> Explainer:
        """Take the weights of another model of the same architecture (a fold's, a randomised draw's).

        The traced gradient pass then serves that model: tracing ResNet50's forward and
        backward pass costs as much as mapping a hundred slices, so the review explains
        every fold and every random draw of the sanity check with one trace. The model this
        explainer was built on shares its layers and takes the weights too.
        """
        for layer in self.two_logits.layers:
            if layer.weights:
                source = model.get_layer("malignancy" if layer.name == "malignancy_logit" else layer.name)
                layer.set_weights(source.get_weights())
        return self

    def maps(self, images: np.ndarray, method: str, classes, batch_size: int | None = None,
             max_n: int = 32) -> np.ndarray:
        """(n, S, S) maps in [0, 1]; all zero where the map is flat (nothing positive)."""
        return self.explain(images, classes, (method,), batch_size, max_n, attribution=False)[0][method]

    def slice_attribution(self, images: np.ndarray, classes, batch_size: int | None = None) -> np.ndarray:
        """(n, 3): gradient x input summed per channel (z-1, z, z+1) of the windowed image.

        The baseline is black (HU below the window); a larger share means that slice
        drove the decision more.
        """
        return self.explain(images, classes, (), batch_size)[1]

    def explain(self, images: np.ndarray, classes, methods=("gradcam", "hirescam"), batch_size: int | None = None,
                max_n: int = 32, attribution: bool = True) -> tuple[dict, np.ndarray | None]:
        """({method: (n, S, S) maps in [0, 1]}, (n, 3) slice attribution or None) of the images, each for its class.

        One traced forward+backward pass per batch serves Grad-CAM, HiResCAM and the
        attribution together (it runs only when one of them is asked for); the other
        methods run through tf-keras-vis.
        """
        maps, _, shares = self._explain(images, classes, methods, batch_size, max_n, attribution, other=False)
        return maps, shares

    def explain_both(self, images: np.ndarray, classes, methods=("gradcam", "hirescam"),
                     batch_size: int | None = None, max_n: int = 32,
                     attribution: bool = True) -> tuple[dict, dict, np.ndarray | None]:
        """(maps of each image's class, maps of the other class, attribution or None).

        The two logits are -z/2 and z/2, so the other class's score has exactly the negated
        gradient: Grad-CAM's and HiResCAM's maps of the other class are their negated maps
        before the ReLU, from the same pass. The tf-keras-vis methods take a pass of their own.
        """
        return self._explain(images, classes, methods, batch_size, max_n, attribution, other=True)

    def _explain(self, images, classes, methods, batch_size, max_n, attribution, other):
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"method must be one of {METHODS}, received {unknown[0]!r}")
        images = np.asarray(images, dtype=np.float32)
        classes = np.asarray(classes, dtype=np.int32)
        if len(classes) != len(images):
            raise ValueError(f"{len(images)} images but {len(classes)} classes")
        size = images.shape[1:3]
        batch_size = batch_size or _batch_size(size)
        maps = {m: np.zeros((len(images),) + size, dtype=np.float32) for m in methods}
        others = {m: np.zeros((len(images),) + size, dtype=np.float32) for m in methods} if other else {}
        shares = np.zeros((len(images), 3), dtype=np.float32) if attribution else None
        needs_pass = attribution or any(m in GRADIENT_METHODS for m in methods)
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            if needs_pass:
                activation, gradient, input_gradient = (t.numpy() for t in self._gradient_pass(
                    tf.constant(images[part]), tf.constant(classes[part])))
            if attribution:  # BGR input -> slices z-1, z, z+1
                shares[part] = (input_gradient[..., ::-1] * windowed_rgb(images[part])).sum(axis=(1, 2))
            for method in methods:
                if method in GRADIENT_METHODS:
                    coarse = GRADIENT_METHODS[method](activation, gradient)
                    against = -coarse  # the other class's map: the gradient negated
                else:
                    coarse = self._tf_keras_vis(images[part], method, classes[part], max_n)
                    against = self._tf_keras_vis(images[part], method, 1 - classes[part], max_n) if other else None
                maps[method][part] = [_upsample_and_scale(m, size) for m in np.maximum(coarse, 0.0)]
                if other:
                    others[method][part] = [_upsample_and_scale(m, size) for m in np.maximum(against, 0.0)]
        return maps, others, shares

    @tf.function(reduce_retracing=True)
    def _gradient_pass(self, images, classes):
        """(layer activation, its gradient, the input's gradient) of each image's class score."""
        with tf.GradientTape() as tape:
            tape.watch(images)
            activation, output = self.gradients(images, training=False)
            score = _class_score(output, classes)
        gradient, input_gradient = tape.gradient(score, [activation, images])
        return activation, gradient, input_gradient

    def _tf_keras_vis(self, images, method, classes, max_n) -> np.ndarray:
        """Maps at the layer's resolution from tf-keras-vis (before ReLU)."""
        tool = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "scorecam": Scorecam,
                "layercam": Layercam}[method](self.two_logits, clone=False)
        options = dict(penultimate_layer=self.layer, seek_penultimate_conv_layer=False, expand_cam=False,
                       normalize_cam=False)
        if method == "scorecam":
            options |= dict(max_N=min(max_n, self.gradients.outputs[0].shape[-1]), batch_size=64)
        score = lambda output: _class_score(output, classes)  # noqa: E731
        if method == "scorecam":
            keras.utils.disable_interactive_logging()  # Score-CAM's predict() would draw progress bars
            try:
                return np.asarray(tool(score, images, **options), dtype=np.float32)
            finally:
                keras.utils.enable_interactive_logging()
        return np.asarray(tool(score, images, **options), dtype=np.float32)


def gradcam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.): channels weighted by their spatially averaged gradient, summed."""
    return (activation * gradient.mean(axis=(1, 2), keepdims=True)).sum(axis=-1)


def hirescam(activation: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos and Carin): gradient x activation per location, summed over channels."""
    return (activation * gradient).sum(axis=-1)


GRADIENT_METHODS = {"gradcam": gradcam, "hirescam": hirescam}  # computed from the one gradient pass


def _batch_size(size) -> int:
    """Images per eager call: 64 at 64 px, fewer as the input grows (about the memory of 5 at 224 px).

    Eager calls cost a fixed overhead each; at 64 px batches of 64 run 2.5x faster per
    image than batches of 16 on a CPU.
    """
    return int(np.clip(PIXELS_PER_BATCH // (size[0] * size[1]), 1, 64))


def _class_score(two_logits, classes):
    """Each image's logit of its own class."""
    return tf.gather(two_logits, tf.cast(classes, tf.int32), axis=1, batch_dims=1)


def _two_logit_model(model: keras.Model) -> keras.Model:
    """The same layers, ending in [-z/2, z/2] instead of sigmoid(z)."""
    head = model.get_layer("malignancy")
    logit = keras.layers.Dense(1, name="malignancy_logit")
    z = logit(head.input)
    logit.set_weights(head.get_weights())
    two = keras.layers.Concatenate(name="two_logits", dtype="float32")([z * -0.5, z * 0.5])
    return keras.Model(model.inputs, two, name="vfrac_two_logits")


def _upsample_and_scale(coarse: np.ndarray, size) -> np.ndarray:
    """Bilinear (pixel centres aligned) to the input size, then scaled to 0..1 (min-max, as
    tf-keras-vis does), so a floor shared by every location does not count as attention."""
    fine = cv2.resize(np.asarray(coarse, dtype=np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    low, high = float(fine.min()), float(fine.max())
    return (fine - low) / (high - low) if high > low else np.zeros_like(fine)
