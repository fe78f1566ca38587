"""tf.data pipeline: shapes, order, golden windowing, eager == graph, seeded augmentation."""

import numpy as np
import pytest
import tensorflow as tf

from vfrac.data.cache import Prepared, write_entry
from vfrac.data.pipeline import Augmentation, make_dataset, make_transform, patient_weights
from vfrac.data.window import BONE_WINDOW

MEANS_BGR = np.array([103.939, 116.779, 123.68])
SIZE = 40  # cache size of the test crops


def write_patients(folder, labels, crops_each=3, seed=0):
    """Cache entries whose crop j of patient i is flat at HU = 100 i + 10 j, with texture."""
    rng = np.random.default_rng(seed)
    entries = {}
    for i in range(len(labels)):
        pid = f"P{i:02d}"
        crops = np.empty((crops_each, SIZE, SIZE, 3), np.int16)
        for j in range(crops_each):
            crops[j] = 100 * i + 10 * j
            crops[j, :, : SIZE // 4] += rng.integers(0, 400, (SIZE, SIZE // 4, 3), dtype=np.int16)  # left side
        path = folder / f"{pid}.npz"
        write_entry(path, Prepared(pid, crops, np.arange(5, 5 + crops_each, dtype=np.int32),
                                   np.zeros((crops_each, 3), np.int32), np.array([2.0, 0.7, 0.7]), 0.2))
        entries[pid] = path
    return entries, {f"P{i:02d}": label for i, label in enumerate(labels)}


@pytest.fixture
def patients(tmp_path):
    return write_patients(tmp_path, [1, 0, 1, 0, 1, 1])


def centre_hu(images, level, width):
    """Invert windowing + caffe preprocessing at the image centre (channel z, BGR order)."""
    pixel = images[:, images.shape[1] // 2, images.shape[2] // 2, 1] + MEANS_BGR[1]
    return pixel / 255.0 * width + level - width / 2


def test_evaluation_batches_have_shapes_order_and_golden_windowing(patients):
    entries, labels = patients
    dataset, index = make_dataset(entries, labels, input_size=32, window=(300.0, 1000.0), batch_size=4)
    assert len(index) == 18 and index[:4] == [("P00", 5), ("P00", 6), ("P00", 7), ("P01", 5)]
    images, targets = [], []
    for batch_images, batch_labels in dataset:
        assert batch_images.dtype == tf.float32 and batch_images.shape[1:] == (32, 32, 3)
        images.append(batch_images.numpy())
        targets.append(batch_labels.numpy())
    images, targets = np.concatenate(images), np.concatenate(targets)
    expected = [100 * int(pid[1:]) + 10 * (z - 5) for pid, z in index]
    assert centre_hu(images, 300.0, 1000.0) == pytest.approx(expected, abs=0.01)  # order = index order
    assert targets.tolist() == [labels[pid] for pid, _ in index]


def test_window_level_maps_to_the_middle_of_the_range():
    transform = make_transform(16, SIZE, 0.2, (250.0, 500.0), None)
    crop = tf.fill((SIZE, SIZE, 3), tf.constant(250, tf.int16))
    image = transform(crop, None).numpy()
    assert image[8, 8] == pytest.approx(127.5 - MEANS_BGR, abs=1e-3)  # HU = level -> 127.5
    low = transform(tf.fill((SIZE, SIZE, 3), tf.constant(-500, tf.int16)), None).numpy()
    assert low[8, 8] == pytest.approx(0.0 - MEANS_BGR, abs=1e-3)  # below the window -> 0


def test_transform_gives_the_same_result_eagerly_and_inside_dataset_map():
    rng = np.random.default_rng(1)
    crop = tf.constant(rng.integers(-1000, 1500, (SIZE, SIZE, 3)), tf.int16)
    seed = tf.constant([7, 11], tf.int64)
    transform = make_transform(24, SIZE, 0.2, BONE_WINDOW, Augmentation())
    eager = transform(crop, seed).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors((crop, seed)).map(transform))).numpy()
    assert np.allclose(eager, mapped, atol=1e-4)
    assert not np.allclose(eager, make_transform(24, SIZE, 0.2, BONE_WINDOW, None)(crop, None).numpy())


def collect(dataset, epochs=2):
    return [np.concatenate([batch[0].numpy() for batch in dataset]) for _ in range(epochs)]


def test_same_seed_same_batches_other_seed_other_batches(patients):
    entries, labels = patients
    kwargs = dict(input_size=24, training=True, batch_size=5)
    first = collect(make_dataset(entries, labels, seed=3, **kwargs)[0])
    again = collect(make_dataset(entries, labels, seed=3, **kwargs)[0])
    other = collect(make_dataset(entries, labels, seed=4, **kwargs)[0])
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)
    assert not np.allclose(first[0], other[0])
    assert not np.allclose(first[0], first[1])  # a new shuffle and new augmentation each epoch


def test_evaluation_never_shuffles_or_augments(patients):
    entries, labels = patients
    dataset, _ = make_dataset(entries, labels, input_size=24, batch_size=7, seed=9)
    first, second = collect(dataset)
    assert np.array_equal(first, second)


def test_flips_are_left_right_only():
    crop = tf.constant(np.random.default_rng(2).integers(-500, 1500, (SIZE, SIZE, 3)), tf.int16)
    flip_only = Augmentation(shift=0, scale=0, rotation=0, offset=0, contrast=0, flip=True)
    plain = make_transform(SIZE, SIZE, 0.0, BONE_WINDOW, None)(crop, None).numpy()
    augmented = make_transform(SIZE, SIZE, 0.0, BONE_WINDOW, flip_only)
    outcomes = set()
    for s in range(12):
        image = augmented(crop, tf.constant([s, 0], tf.int64)).numpy()
        if np.allclose(image, plain, atol=1e-3):
            outcomes.add("same")
        elif np.allclose(image, plain[:, ::-1], atol=1e-3):
            outcomes.add("left-right")
        else:
            outcomes.add("other")
    assert outcomes == {"same", "left-right"}


def test_balanced_sampling_and_per_patient_weights(tmp_path):
    entries, labels = write_patients(tmp_path, [1, 1, 1, 1, 1, 1, 0, 0], crops_each=4)
    dataset, index = make_dataset(entries, labels, input_size=16, training=True, balance="sampling",
                                  batch_size=8, seed=0)
    drawn = np.concatenate([y.numpy() for _ in range(10) for _, y in dataset])
    assert len(drawn) == 10 * len(index)
    assert abs(drawn.mean() - 0.5) < 0.06  # against 0.75 without balancing
    # P0 (malignant, 2 crops), P1 (malignant, 4), P2 (benign, 2): each class half the loss, each
    # patient an equal part of its class, weights averaging 1 over the 8 crops
    index = [("P0", 0), ("P0", 1), *(("P1", z) for z in range(4)), ("P2", 0), ("P2", 1)]
    weights = patient_weights(index, {"P0": 1, "P1": 1, "P2": 0})
    assert weights == pytest.approx({"P0": 1.0, "P1": 0.5, "P2": 2.0})


def test_training_batches_carry_each_patients_weight_and_a_known_length(tmp_path):
    entries, labels = write_patients(tmp_path, [1, 1, 1, 0], crops_each=2)
    dataset, index = make_dataset(entries, labels, input_size=16, training=True, batch_size=3, seed=0)
    assert int(dataset.cardinality()) == 2  # 8 crops in full batches of 3: the last 2 wait for another epoch
    epochs = [[(float(y), float(w)) for _, ys, ws in dataset for y, w in zip(ys, ws, strict=True)] for _ in range(6)]
    assert all(len(rows) == 6 and set(rows) <= {(0.0, 2.0), (1.0, 2 / 3)} for rows in epochs)
    assert len({tuple(rows) for rows in epochs}) > 1  # each epoch's shuffle leaves out other crops
    few, _ = make_dataset(entries, labels, input_size=16, training=True, batch_size=16, seed=0)
    assert int(few.cardinality()) == 1 and len(next(iter(few))[0]) == 8  # fewer crops than a batch: one batch
    evaluation, _ = make_dataset(entries, labels, input_size=16, batch_size=3)
    assert int(evaluation.cardinality()) == 3 and len(next(iter(evaluation))) == 2  # (image, label)
    with pytest.raises(ValueError, match="balance must be one of"):
        make_dataset(entries, labels, balance="oversample")

