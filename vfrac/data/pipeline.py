"""tf.data from prepared crops to ResNet50 inputs, with every transform in the graph.

Order as in big_vision: parallel load of each patient's crops, cache (int16 HU, before
any randomness), seeded shuffle, augmentation map, batch, prefetch. One projective
transform does box jitter, rotation, left-right flip and the resize to the input
size; then the HU window (level and width are arguments, for tuning) and ResNet50's
preprocessing. Random draws are stateless and seeded per element from
`Dataset.random(seed)`, so the same seed gives the same batches in every epoch
sequence, and evaluation datasets neither shuffle nor augment.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from vfrac.data.cache import read_entry
from vfrac.data.window import BONE_WINDOW, window_unit

AIR_HU = -1000.0
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # what ResNet50's preprocess_input subtracts
BALANCE = ("weights", "sampling", "none")


@dataclass(frozen=True)
class Augmentation:
    """Strength 1 values of each augmentation; `strength` scales them all (0 turns off)."""

    strength: float = 1.0
    shift: float = 0.08  # box centre moves up to this fraction of the box side
    scale: float = 0.12  # box side changes by up to this fraction
    rotation: float = 10.0  # degrees
    flip: bool = True  # left-right only: anterior-posterior flips do not occur in axial CT
    offset: float = 20.0  # HU added, up to
    contrast: float = 0.05  # HU scaled by 1 +- this


def entry_index(entries: dict) -> list[tuple[str, int]]:
    """(patient_id, slice) of every crop, in the order an evaluation dataset yields them."""
    index = []
    for pid, path in entries.items():
        with np.load(path, allow_pickle=False) as data:
            index.extend((pid, int(z)) for z in data["slices"])
    return index


def patient_weights(index: list[tuple[str, int]], labels: dict) -> dict[str, float]:
    """Loss weight of each slice, per patient: every patient counts the same, both classes half.

    Weights from patient counts applied to a per-slice loss would let a patient with
    30 slices count three times one with 10; here a patient's slices share its weight,
    and the weights average to 1 over the slices.
    """
    crops = Counter(pid for pid, _ in index)
    counts = np.bincount([int(labels[p]) for p in crops], minlength=2)
    classes = int(np.count_nonzero(counts))
    share = {pid: 1.0 / (classes * counts[int(labels[pid])] * n) for pid, n in crops.items()}
    return {pid: w * len(index) for pid, w in share.items()}


def make_dataset(entries: dict, labels: dict, input_size: int = 224, window=BONE_WINDOW,
                 training: bool = False, seed: int = 0, batch_size: int = 32,
                 augmentation: Augmentation = Augmentation(), balance: str = "weights"):
    """(dataset of (image, label) batches, [(patient_id, slice)] in evaluation order).

    `entries` maps patient id -> cache file, `labels` patient id -> 0/1. With
    training=True the dataset shuffles, augments and balances the classes: with
    balance="weights" it yields (image, label, weight) with `patient_weights`, with
    "sampling" it draws both classes equally often; its batches are all full (a few crops,
    different each epoch, are left out of each). The length is known (`cardinality()`),
    so learning-rate schedules can count steps.
    """
    if balance not in BALANCE:
        raise ValueError(f"balance must be one of {BALANCE}, received {balance!r}")
    if not entries:
        raise ValueError("no patients given")
    index = entry_index(entries)
    first = read_entry(next(iter(entries.values())))
    cache_size, context = first.crops.shape[1], first.context
    pids = list(entries)
    paths = [str(entries[p]) for p in pids]
    patient_labels = [float(labels[p]) for p in pids]
    weighted = training and balance == "weights"
    weights = patient_weights(index, labels) if weighted else dict.fromkeys(pids, 1.0)

    def load(path, label, weight):
        crops = tf.numpy_function(_load_crops, [path], tf.int16, stateful=False)
        crops = tf.ensure_shape(crops, (None, cache_size, cache_size, 3))
        n = tf.shape(crops)[0]
        return crops, tf.fill([n], label), tf.fill([n], weight)

    loaded = (tf.data.Dataset.from_tensor_slices((paths, patient_labels, [weights[p] for p in pids]))
              .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
              .unbatch()
              .apply(tf.data.experimental.assert_cardinality(len(index))))
    dataset = loaded.cache()
    transform = make_transform(input_size, cache_size, context, window, augmentation if training else None)
    if training:
        count = len(index)
        if balance == "sampling":
            dataset = _balanced(loaded, seed, count)
        dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda element, pair: (transform(element[0], pair), *element[1:(3 if weighted else 2)]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        dataset = dataset.map(lambda crop, label, _: (transform(crop, None), label),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Training batches are all full: a last, smaller batch made TensorFlow trace the training
    # step (and BatchNorm's recalibration) a second time, 15-20 s for ResNet50 on a CPU. The
    # crops left out change with each epoch's shuffle.
    full_only = training and len(index) >= batch_size
    dataset = dataset.batch(batch_size, drop_remainder=full_only).prefetch(tf.data.AUTOTUNE)
    return dataset, index


def make_transform(input_size: int, cache_size: int, context: float, window, augmentation):
    """crop (C, C, 3) int16 HU, seed (2,) or None -> (S, S, 3) float32 ResNet50 input."""
    window_unit(0.0, window)  # a bad window fails here, not inside the input pipeline
    box_side = cache_size / (1.0 + 2.0 * context)  # the ROI square inside the cached crop

    def transform(crop, seed):
        hu = tf.cast(crop, tf.float32)
        shift = tf.zeros([2])
        scale, angle, mirror = tf.constant(1.0), tf.constant(0.0), tf.constant(1.0)
        if augmentation is not None and augmentation.strength > 0:
            a, s = augmentation, augmentation.strength
            draws = tf.random.stateless_uniform([7], seed=seed, minval=-1.0, maxval=1.0)
            shift = draws[0:2] * a.shift * s * box_side
            scale = tf.exp(draws[2] * math.log1p(a.scale * s))
            angle = draws[3] * a.rotation * s * math.pi / 180.0
            if a.flip:
                mirror = tf.where(draws[4] < 0.0, -1.0, 1.0)
            hu = hu * (1.0 + draws[5] * a.contrast * s) + draws[6] * a.offset * s
        hu = _resample(hu, input_size, cache_size, box_side, shift, scale, angle, mirror)
        image = window_unit(hu, window, clip=tf.clip_by_value) * 255.0
        return preprocess_input(image)

    return transform


def preprocess_input(image):
    """`keras.applications.resnet50.preprocess_input` ("caffe": RGB -> BGR, ImageNet mean off) in TensorFlow ops.

    Written out so that the pipeline stays a TensorFlow graph under any Keras backend
    (Keras' own version runs the backend's ops, which a tf.data map cannot hold under JAX).
    """
    return image[..., ::-1] - tf.constant(CAFFE_MEAN_BGR)


def evaluation_images(crops: np.ndarray, context: float, input_size: int, window, batch_size: int = 64) -> np.ndarray:
    """Cached crops (n, C, C, 3) int16 -> the network inputs an evaluation dataset gives them."""
    crops = np.asarray(crops)
    transform = make_transform(input_size, crops.shape[1], context, window, None)
    dataset = tf.data.Dataset.from_tensor_slices(crops).map(lambda crop: transform(crop, None)).batch(batch_size)
    images = [batch.numpy() for batch in dataset]
    return np.concatenate(images) if images else np.zeros((0, input_size, input_size, 3), np.float32)


def _resample(hu, size, cache_size, box_side, shift, scale, angle, mirror):
    """One bilinear projective warp: output pixel -> rotated, scaled, shifted box in the crop."""
    step = box_side * scale / size  # crop pixels per output pixel
    cos, sin = tf.cos(angle) * step, tf.sin(angle) * step
    a0, a1 = cos * mirror, -sin
    b0, b1 = sin * mirror, cos
    centre_in = (cache_size - 1) / 2.0
    centre_out = (size - 1) / 2.0
    a2 = centre_in + shift[0] - (a0 + a1) * centre_out
    b2 = centre_in + shift[1] - (b0 + b1) * centre_out
    matrix = tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])[None, :]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=hu[None], transforms=matrix, output_shape=tf.constant([size, size]),
        fill_value=AIR_HU, interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.reshape(warped[0], (size, size, 3))


def _balanced(dataset, seed, count):
    """Both classes drawn equally often, for `count` elements per epoch.

    Each class has a cache of its own, filled from the files: with two filtered iterators
    over one in-memory cache still being filled, a loaded test run once drew no benign
    crop at all.
    """
    negatives = dataset.filter(lambda crop, label, weight: label < 0.5).cache().repeat()
    positives = dataset.filter(lambda crop, label, weight: label >= 0.5).cache().repeat()
    return tf.data.Dataset.sample_from_datasets([negatives, positives], weights=[0.5, 0.5],
                                                seed=seed, rerandomize_each_iteration=True).take(count)


def _load_crops(path) -> np.ndarray:
    return read_entry(path.decode() if isinstance(path, bytes) else str(path)).crops
