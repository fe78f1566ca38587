"""`python -m experiments.doctor` (`vfrac doctor`) in process: what it reports is what this installation is; a
missing TensorFlow or an unusable GPU is said in words; and the /proc/cpuinfo parser on literal text."""

import platform
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from experiments import cli, doctor
from experiments.config import resolve
from experiments.cv import parse_args as cv_args
from experiments.doctor import default_stores, main
from vfrac.environment import CpuInfo, nvidia_gpus, parse_cpuinfo
from vfrac.model.network import CONV_GRADIENTS, active_conv_gradient

TRACKING = "postgresql://vfrac:s3cret-t@db.example.org:5432/vfrac_mlflow"
STORAGE = "postgresql://vfrac:s3cret-s@db.example.org/vfrac_optuna"


def report(capsys) -> tuple[dict[str, str], str]:
    """main([])'s exit code checked; its `label: value` lines by label, and the whole output."""
    assert main([]) == 0
    out = capsys.readouterr().out
    values = {}
    for text in out.splitlines():
        label, colon, value = text.partition(":")
        if colon and label.strip():
            values.setdefault(label.strip(), value.strip())
    return values, out


def test_the_report_is_this_installation(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", TRACKING)
    monkeypatch.setenv("VFRAC_STORAGE", STORAGE)
    values, out = report(capsys)
    version, executable = values["Python"].split(" ", 1)
    assert version == platform.python_version() and executable == f"({sys.executable})"
    assert values["TensorFlow"].split()[0] == tf.__version__
    assert values["Keras"] == f"{keras.__version__}, backend {keras.backend.backend()}"
    assert values["CPU (TensorFlow)"].startswith("/physical_device:CPU:")
    gradient = values["convolution gradient"].split()[0]
    assert gradient in CONV_GRADIENTS and gradient == active_conv_gradient("auto") != "auto"
    assert "--conv-gradient auto" in values["convolution gradient"]
    assert values["precision"].startswith("float32 (default)") and "--precision bfloat16" in values["precision"]
    # Keras 3 turns XLA on under jit_compile="auto" where TensorFlow lists a GPU (and op determinism is off)
    assert values["XLA"].startswith("on" if tf.config.list_physical_devices("GPU") else "off")
    assert values["tracking URI"].startswith("postgresql://vfrac:***@db.example.org:5432/vfrac_mlflow ")
    assert "$MLFLOW_TRACKING_URI" in values["tracking URI"]
    assert values["Optuna storage"].startswith("postgresql://vfrac:***@db.example.org/vfrac_optuna ")
    assert "s3cret" not in out
    if Path("/proc/cpuinfo").is_file():
        cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        assert values["processor"].startswith(cpu.model)
        assert values["CPU features"].startswith(f"AVX2 {'yes' if cpu.avx2 else 'no'}, "
                                                 f"AVX-512 {'yes' if cpu.avx512 else 'no'}")
        assert values["CPU features"].endswith(f"AMX {'yes' if cpu.amx else 'no'}")


def test_the_default_stores_are_those_a_run_resolves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # resolve() makes mlruns/ in the working folder
    for environment in ({}, {"MLFLOW_TRACKING_URI": TRACKING, "VFRAC_STORAGE": STORAGE}):
        for name in ("MLFLOW_TRACKING_URI", "VFRAC_STORAGE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        resolved = resolve(cv_args([])).stores
        stores = default_stores()
        assert (stores.tracking_uri, stores.storage) == (resolved.tracking_uri, resolved.storage)
    assert default_stores().tracking_uri == TRACKING


def test_vfrac_doctor_help_and_listing(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["doctor", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m experiments.doctor")
    assert cli.main(["--help"]) == 0
    assert "\n  doctor " in capsys.readouterr().out


def test_a_missing_tensorflow_is_said_in_words(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    values, out = report(capsys)
    assert values["TensorFlow"].startswith("not usable: ")
    assert values["devices"] == "unknown: TensorFlow is not usable"
    assert values["convolution gradient"].startswith("unknown: ")
    assert "pip install -r requirements.txt" in values["note"]


def test_a_gpu_listed_but_not_started_is_said_in_words(capsys, monkeypatch):
    """TensorFlow's device calls stand in for a machine whose GPU TensorFlow lists but cannot start."""
    listed = [tf.config.PhysicalDevice("/physical_device:CPU:0", "CPU"),
              tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda device_type=None: [d for d in listed if device_type in (None, d.device_type)])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"device_name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0)})
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda device_type=None: [] if device_type == "GPU" else [tf.config.LogicalDevice(
                            "/device:CPU:0", "CPU")])
    values, out = report(capsys)
    assert values["GPU (TensorFlow)"] == ("/physical_device:GPU:0: NVIDIA H100 80GB HBM3, compute capability 9.0, "
                                          "NOT USABLE: TensorFlow lists it but could not start it")
    assert values["note"] == ("/physical_device:GPU:0 is listed but not usable (TensorFlow lists it but could not "
                              "start it); a run may fail on it or leave it idle")
    assert values["convolution gradient"].startswith("fast ")  # vfrac asks for the GPUs TensorFlow started
    assert values["XLA"].startswith("on")  # Keras asks for the GPUs TensorFlow lists


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="TensorFlow sees a GPU here")
def test_a_gpu_the_driver_lists_but_tensorflow_cannot_see_gets_the_install_line(capsys, monkeypatch):
    monkeypatch.setattr(doctor, "nvidia_gpus", lambda: ["NVIDIA A100-SXM4-40GB"])
    monkeypatch.setattr(doctor, "missing_cuda_libraries", lambda: ["nvidia-cudnn-cu12", "nvidia-cublas-cu12"])
    values, _ = report(capsys)
    assert values["note"] == (f"the NVIDIA driver lists NVIDIA A100-SXM4-40GB, but TensorFlow sees no GPU: the CUDA "
                              f"libraries TensorFlow loads are not installed (2 of tensorflow[and-cuda]'s missing); "
                              f"install them with {sys.executable} -m pip install "
                              f"\"tensorflow[and-cuda]=={tf.__version__}\"")


def test_nvidia_gpus_reads_the_drivers_information_files(tmp_path):
    for bus, model in (("0000:3b:00.0", "NVIDIA H100 80GB HBM3"), ("0000:1a:00.0", "Tesla V100-SXM2-32GB")):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   \t\t 35\nGPU UUID: \t GPU-1234\n"
                                                    "Bus Type: \t PCIe\nDevice Minor: \t 0\n")
    assert nvidia_gpus(tmp_path) == ["Tesla V100-SXM2-32GB", "NVIDIA H100 80GB HBM3"]  # in bus order
    assert nvidia_gpus(tmp_path / "absent") == []


X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512dq avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8
bogomips\t: 4000.00

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: another model, never read
flags\t\t: fpu
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx fma avx2 bmi2 sha_ni
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("text, expected", [
    (X86, CpuInfo("Intel(R) Xeon(R) Platinum 8480+", avx2=True, avx512=True, avx512_bf16=True, amx=True)),
    (EPYC, CpuInfo("AMD EPYC 7B13", avx2=True, avx512=False, avx512_bf16=False, amx=False)),
    (ARM, CpuInfo(None, avx2=False, avx512=False, avx512_bf16=False, amx=False)),
    ("", CpuInfo(None, None, None, None, None)),
])
def test_parse_cpuinfo(text, expected):
    assert parse_cpuinfo(text) == expected
