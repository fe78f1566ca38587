"""Every benchmark under bench/ imports and runs its core on a tiny input, so none can rot unseen.

The benches are run by hand for their figures; here each one's code path runs once on
the smallest input it takes and its printed figures are checked for shape. The benches
that need a finished run or model are smoke-run where one exists: bench_learning's
scores in tests/commands/test_cv.py, bench_predict's call in tests/commands/test_predict.py, bench_faults
by tests/commands/test_faults.py, which takes its cases from it.
"""

import math
import re

import keras
import pytest

from bench import bench_bombs, bench_explain, bench_load, bench_pipeline, bench_synth, bench_train


def test_bench_pipeline_counts_the_crops_of_a_training_dataset(tmp_path):
    from vfrac.data.pipeline import make_dataset

    entries, labels = bench_pipeline.fake_cache(tmp_path, 3, 2)
    dataset, index = make_dataset(entries, labels, input_size=32, training=True, batch_size=2)
    assert len(dataset.element_spec) == 3  # images, labels, weights: the bench once unpacked two
    rate = bench_pipeline.pipeline_rate(dataset, epochs=1)
    assert len(index) == 6 and rate > 0


def tiny_classifier(size: int) -> keras.Model:
    """A stand-in for ResNet50 (whose training step takes a minute to trace): the bench's code, not its figures."""
    inputs = keras.Input((size, size, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv1_conv")(inputs))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="malignancy")(pooled))


def test_bench_train_times_the_training_step(tmp_path):
    measured = bench_train.keras_rate("tf", 32, 2, 1, tmp_path, model_fn=tiny_classifier)
    assert math.isfinite(measured["rate"]) and measured["rate"] > 0 and measured["first"] > 0


def test_bench_train_reports_a_missing_framework_instead_of_crashing(tmp_path):
    missing = bench_train.run_child("torch", str(tmp_path / "no-python"), 32, 2, 1, None)
    assert "error" in missing


def test_bench_explain_times_each_method_against_forward_and_backward(capsys):
    args = type("Args", (), {"batch": 2, "repeats": 1, "methods": ["gradcam", "hirescam", "layercam"],
                             "layer": "conv2_block3_out"})()
    bench_explain.measure(32, args)
    out = capsys.readouterr().out
    assert re.search(r"forward\+backward [\d.]+ slices/s", out)
    assert len(re.findall(r"x forward\+backward", out)) == 3  # the review's pass, tf-keras-vis Grad-CAM, LayerCAM


def test_bench_load_agrees_with_simpleitk(capsys):
    pytest.importorskip("SimpleITK", reason="bench/requirements.txt")
    bench_load.main(["--slices", "3", "--repeats", "1"])
    assert re.search(r"ratio: [\d.]+x", capsys.readouterr().out)


def test_bench_synth_times_parallel_and_serial_writing(capsys):
    bench_synth.main(["--patients", "1", "--workers", "1"])
    assert re.search(r"serial [\d.]+ s, speed-up [\d.]+x", capsys.readouterr().out)


def test_bench_bombs_measures_every_case(capsys):
    bench_bombs.main(["--slices", "2", "--cap-gb", "2"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "MB" in line]
    assert len(rows) >= 5 and not any("died" in row for row in rows), rows
    assert sum("InputError" in row for row in rows) >= 5  # every bomb refused


def test_bench_learning_takes_the_median_ratio_of_correctly_called_malignant_slices_showing_the_feature():
    from bench.bench_learning import attention_ratios

    patients = [{"patient_id": "a", "label": "1", "prediction": "1"},  # counted
                {"patient_id": "b", "label": "1", "prediction": "0"},  # missed: left out
                {"patient_id": "c", "label": "0", "prediction": "0"}]  # benign: left out

    def row(patient, feature, ratio, area="0.1", method="gradcam"):
        return {"patient_id": patient, "method": method, "feature": feature, "ratio": ratio, "area_fraction": area}

    attention = [row("a", "bone_destruction", "1.0"), row("a", "bone_destruction", "2.0"),
                 row("a", "bone_destruction", "6.0"), row("a", "bone_destruction", "nan", area="0.0"),
                 row("a", "bone_destruction", "9.0", method="hirescam"), row("b", "bone_destruction", "9.0"),
                 row("c", "bone_destruction", "9.0"), row("a", "pedicle_involvement", "3.0")]
    result = attention_ratios(patients, attention)
    assert result["ratio_bone_destruction"] == 2.0 and result["slices_bone_destruction"] == 3
    assert result["ratio_pedicle_involvement"] == 3.0 and result["slices_pedicle_involvement"] == 1
