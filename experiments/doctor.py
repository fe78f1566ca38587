"""`python -m experiments.doctor` (`vfrac doctor`): what this installation runs on and what a run would use.

Python and package versions, the devices TensorFlow sees, the processor, and what
`python -m experiments.cv` would choose here under its defaults: the convolution
gradient, the precision, XLA, and the stores it would write to (passwords shown as ***).
It changes nothing and exits 0; a missing or broken part is reported in words.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from experiments.config import ModelSettings
from explain.runs import default_storage, default_tracking_uri, masked
from vfrac import __version__
from vfrac.environment import (
    CpuInfo,
    TensorFlowFacts,
    cpu_info,
    missing_cuda_libraries,
    nvidia_gpus,
    package_version,
    python_facts,
    tensorflow_facts,
)
from vfrac.runtime import apply_process_defaults

WIDTH = 24  # the labels' column


@dataclass(frozen=True)
class Stores:
    """Where a CV run started here without --tracking-uri and --storage would write, and why there."""

    tracking_uri: str
    tracking_source: str
    storage: str
    storage_source: str


def default_stores() -> Stores:
    """The stores `experiments.config.resolve` picks when neither flag is given (passwords included)."""
    tracking = default_tracking_uri()
    tracking_source = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "default: mlruns/ here"
    storage = default_storage()
    storage_source = "$VFRAC_STORAGE" if os.environ.get("VFRAC_STORAGE") else "default: mlruns/ here"
    return Stores(tracking, tracking_source, storage, storage_source)


def default_setting(name: str):
    """A ModelSettings field's default: what a run uses without the flag."""
    return {f.name: f.default for f in dataclasses.fields(ModelSettings)}[name]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.doctor", description=__doc__.splitlines()[0],
                                     epilog="Run it from the folder you run vfrac's commands in: the default "
                                            "stores are relative to it.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    apply_process_defaults()  # before anything loads TensorFlow
    parse_args(argv)
    python = python_facts()
    cpu = cpu_info()
    tf = tensorflow_facts()  # loads TensorFlow and Keras, once
    stores = default_stores()

    line("Python", f"{python['version']} ({python['executable']})")
    line("platform", python["platform"])
    line("vfrac", f"{__version__} ({Path(sys.modules['vfrac'].__file__).parent})")
    line("TensorFlow", _tensorflow(tf))
    line("Keras", f"{tf.keras_version}, backend {tf.keras_backend}" if tf.keras_version
         else f"not usable: {tf.errors.get('keras', 'unknown')}")
    for label, distributions in (("MLflow", ("mlflow", "mlflow-skinny")), ("Optuna", ("optuna",)),
                                 ("pydicom", ("pydicom",))):
        line(label, package_version(*distributions) or "not installed (pip install -r requirements.txt)")

    print("\nThis machine")
    cores = f", {cpu.cores} cores for this process" if cpu.cores else ""
    line("  processor", f"{cpu.model or 'model unknown'}{cores}")
    line("  CPU features", _cpu_features(cpu))
    _devices(tf)

    print("\nA run started here (python -m experiments.cv, its defaults)")
    line("  convolution gradient", _conv_gradient(tf))
    line("  precision", _precision(cpu))
    line("  XLA", _xla(tf))
    line("  tracking URI", f"{masked(stores.tracking_uri)} ({stores.tracking_source}; --tracking-uri overrides)")
    line("  Optuna storage", f"{masked(stores.storage)} ({stores.storage_source}; --storage overrides)")
    line("  working folder", f"{Path.cwd()} (data/ and mlruns/ are read and written here)")

    advice = _advice(tf)
    if advice:
        print()
        for text in advice:
            print(f"note: {text}")
    return 0


def line(label: str, value: str) -> None:
    print(f"{label + ':':<{WIDTH}}{value}")


def _tensorflow(tf: TensorFlowFacts) -> str:
    if tf.version is None:
        return f"not usable: {tf.errors.get('tensorflow', 'unknown')}"
    if tf.built_with_cuda:
        cuda = f"built with CUDA {tf.cuda_version or '?'}, cuDNN {tf.cudnn_version or '?'}"
    else:
        cuda = "built without CUDA" if tf.built_with_cuda is False else "CUDA build unknown"
    return f"{tf.version} ({cuda})"


def _devices(tf: TensorFlowFacts) -> None:
    if tf.version is None:
        line("  devices", "unknown: TensorFlow is not usable")
        return
    if "devices" in tf.errors:
        line("  devices", f"unknown: TensorFlow could not list them: {tf.errors['devices']}")
        return
    for device in tf.devices:
        if device.kind != "GPU":
            line(f"  {device.kind} (TensorFlow)", device.name)
            continue
        state = ", a test computation ran on it" if device.usable else f", NOT USABLE: {device.problem}"
        line("  GPU (TensorFlow)", f"{device.name}: {device.model or 'model unknown'}{state}")
    if not tf.gpus:
        line("  GPU (TensorFlow)", "none visible to TensorFlow")


def _cpu_features(cpu: CpuInfo) -> str:
    def has(value):
        return "unknown" if value is None else ("yes" if value else "no")

    return (f"AVX2 {has(cpu.avx2)}, AVX-512 {has(cpu.avx512)} (with bfloat16: {has(cpu.avx512_bf16)}), "
            f"AMX {has(cpu.amx)}")


def _conv_gradient(tf: TensorFlowFacts) -> str:
    if tf.conv_gradient is None:
        return f"unknown: {tf.errors.get('conv_gradient', 'Keras is not usable')}"
    why = ("vfrac's, computed as a forward convolution: TensorFlow without a GPU" if tf.conv_gradient == "fast"
           else "TensorFlow's own: a GPU is visible, or Keras runs on another backend")
    return f"{tf.conv_gradient} (--conv-gradient {default_setting('conv_gradient')}: {why})"


def _precision(cpu: CpuInfo) -> str:
    precision = default_setting("precision")
    try:
        from vfrac.model.network import PRECISIONS  # imports Keras: only once tensorflow_facts has loaded it
    except Exception:  # Keras is not usable (said above)
        return f"{precision} (default)"
    amx = " (this processor has AMX)" if cpu.amx else ""
    others = [f"--precision {p}" for p in PRECISIONS if p != precision]
    return (f"{precision} (default); {' or '.join(others)} computes in bfloat16 with float32 weights: it pays on "
            f"GPUs and on CPUs with AMX{amx}")


def _xla(tf: TensorFlowFacts) -> str:
    if tf.xla is None:
        return f"unknown: {tf.errors.get('xla', 'Keras is not usable')}"
    if tf.xla:
        where = "; on TensorFlow it does where a GPU is visible" if tf.keras_backend == "tensorflow" else ""
        return f"on: Keras compiles training and prediction with XLA (jit_compile=\"auto\"{where})"
    if tf.keras_backend == "tensorflow" and tf.gpus and tf.op_determinism:
        return "off: TensorFlow's op determinism is on, and Keras leaves XLA off under it"
    if tf.keras_backend == "tensorflow" and not tf.gpus:
        return "off (jit_compile=\"auto\": Keras turns XLA on only where TensorFlow sees a GPU)"
    return "off (Keras' choice under jit_compile=\"auto\")"


def _advice(tf: TensorFlowFacts) -> list[str]:
    notes = []
    if tf.version is None:
        notes.append(f"TensorFlow cannot be loaded; install vfrac's requirements: "
                     f"{sys.executable} -m pip install -r requirements.txt")
        return notes
    driver_gpus = nvidia_gpus()
    if driver_gpus and not tf.gpus:
        missing = missing_cuda_libraries()
        text = f"the NVIDIA driver lists {', '.join(driver_gpus)}, but TensorFlow sees no GPU"
        if missing:
            text += (f": the CUDA libraries TensorFlow loads are not installed ({len(missing)} of "
                     f"tensorflow[and-cuda]'s missing); install them with "
                     f"{sys.executable} -m pip install \"tensorflow[and-cuda]=={tf.version}\"")
        elif tf.built_with_cuda is False:
            text += ": this TensorFlow was built without CUDA"
        else:
            text += ("; check that $CUDA_VISIBLE_DEVICES does not hide it and that the driver is recent enough for "
                     f"CUDA {tf.cuda_version or ''}".rstrip())
        notes.append(text)
    for device in tf.gpus:
        if not device.usable:
            notes.append(f"{device.name} is listed but not usable ({device.problem}); a run may fail on it or "
                         "leave it idle")
    return notes


if __name__ == "__main__":
    sys.exit(main())
