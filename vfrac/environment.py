"""What this installation runs on: Python, packages, processor, the devices TensorFlow sees, and what Keras and
vfrac choose on them. Facts only, as values; `experiments.doctor` prints them.

Nothing here imports TensorFlow at module level: `tensorflow_facts` loads it (through Keras) once, so a caller
sets the process defaults (`vfrac.runtime.apply_process_defaults`) first.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the NVIDIA driver has found (Linux)
CUDA_EXTRA = "and-cuda"  # tensorflow[and-cuda]: the CUDA and cuDNN libraries TensorFlow loads on Linux


@dataclass(frozen=True)
class CpuInfo:
    """The processor's model and the vector and matrix units that decide CPU speed; None: unknown."""

    model: str | None
    avx2: bool | None
    avx512: bool | None  # AVX-512 Foundation
    avx512_bf16: bool | None  # bfloat16 dot products in AVX-512
    amx: bool | None  # Advanced Matrix Extensions (bfloat16 tiles): where --precision bfloat16 pays on a CPU
    cores: int | None = None  # the cores this process may run on


@dataclass(frozen=True)
class Device:
    """A device TensorFlow lists: usable says whether a small computation ran on it."""

    kind: str  # "CPU" or "GPU"
    name: str  # TensorFlow's, e.g. /physical_device:GPU:0
    model: str | None = None  # the GPU's name, with its compute capability
    usable: bool = True
    problem: str | None = None  # why not, in TensorFlow's words


@dataclass(frozen=True)
class TensorFlowFacts:
    """TensorFlow, Keras and what a vfrac run would choose with them. error: why they could not be loaded."""

    version: str | None = None
    keras_version: str | None = None
    keras_backend: str | None = None
    built_with_cuda: bool | None = None
    cuda_version: str | None = None
    cudnn_version: str | None = None
    devices: tuple[Device, ...] = ()
    conv_gradient: str | None = None  # what `--conv-gradient auto` gives: "fast" or "stock"
    xla: bool | None = None  # whether Keras compiles a model with XLA under jit_compile="auto"
    op_determinism: bool | None = None  # TensorFlow's op determinism, under which Keras leaves XLA off
    errors: dict[str, str] = field(default_factory=dict)  # what failed ("tensorflow", "keras", ...) -> why

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind == "GPU")


def python_facts() -> dict[str, str]:
    return {"version": platform.python_version(), "executable": sys.executable,
            "implementation": platform.python_implementation(), "platform": platform.platform()}


def package_version(*distributions: str) -> str | None:
    """The installed version of the first of these distributions found, without importing it; None: none is."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model and flags in Linux's /proc/cpuinfo (x86 "flags", ARM "Features")."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # one processor is enough: they all report the same
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or None
    flags_text = fields.get("flags", fields.get("features"))
    if flags_text is None:
        return CpuInfo(model, None, None, None, None)
    flags = set(flags_text.split())
    return CpuInfo(model=model, avx2="avx2" in flags, avx512="avx512f" in flags,
                   avx512_bf16="avx512_bf16" in flags, amx=bool({"amx_bf16", "amx_tile"} & flags))


def cpu_info(path: Path = CPUINFO) -> CpuInfo:
    """This machine's CpuInfo: from /proc/cpuinfo on Linux; elsewhere, or unreadable, the flags are unknown."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no sched_getaffinity
        cores = os.cpu_count()
    try:
        info = parse_cpuinfo(path.read_text(errors="replace"))
    except OSError:
        return CpuInfo(platform.processor() or None, None, None, None, None, cores)
    return CpuInfo(info.model, info.avx2, info.avx512, info.avx512_bf16, info.amx, cores)


def nvidia_gpus(root: Path = NVIDIA_GPUS) -> list[str]:
    """The GPUs the NVIDIA driver has found (Linux), by model, whether or not TensorFlow can use them."""
    models = []
    for information in sorted(root.glob("*/information")):
        try:
            text = information.read_text(errors="replace")
        except OSError:
            continue
        found = re.search(r"^Model:\s*(.+?)\s*$", text, re.MULTILINE)
        models.append(found.group(1) if found else information.parent.name)
    return models


def missing_cuda_libraries() -> list[str]:
    """The distributions of tensorflow[and-cuda] that are not installed (none on a TensorFlow without that extra)."""
    try:
        requirements = importlib.metadata.requires("tensorflow") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if re.search(rf"""extra\s*==\s*["']{CUDA_EXTRA}["']""", marker):
            name = re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0)
            if package_version(name) is None:
                missing.append(name)
    return missing


def tensorflow_facts() -> TensorFlowFacts:
    """Load TensorFlow and Keras once and ask them; a part that fails is named in `errors`, never raised."""
    errors: dict[str, str] = {}
    facts: dict = {}
    try:
        import tensorflow as tf  # here: a missing or broken TensorFlow is reported in words, not raised
    except Exception as error:  # ImportError, or a broken install's own
        tf = None
        errors["tensorflow"] = _words(error)
    if tf is not None:
        facts |= _tensorflow_build(tf, errors)
        facts["devices"] = _devices(tf, errors)
        try:
            from tensorflow.python.framework.config import is_op_determinism_enabled  # as Keras reads it

            facts["op_determinism"] = bool(is_op_determinism_enabled())
        except Exception:  # a private module: leave it unknown where it moved
            pass
    try:
        import keras  # (see above)
    except Exception as error:
        errors["keras"] = _words(error)
        return TensorFlowFacts(errors=errors, **facts)
    facts["keras_version"], facts["keras_backend"] = keras.__version__, keras.backend.backend()
    try:
        from vfrac.model.network import active_conv_gradient  # loads Keras: only once it is known to load

        facts["conv_gradient"] = active_conv_gradient("auto")
    except Exception as error:
        errors["conv_gradient"] = _words(error)
    try:
        facts["xla"] = _keras_auto_xla(keras)
    except Exception as error:
        errors["xla"] = _words(error)
    return TensorFlowFacts(errors=errors, **facts)


def _tensorflow_build(tf, errors: dict) -> dict:
    facts = {"version": tf.__version__}
    try:
        build = tf.sysconfig.get_build_info()
        facts["built_with_cuda"] = bool(build.get("is_cuda_build", tf.test.is_built_with_cuda()))
        facts["cuda_version"] = build.get("cuda_version")
        facts["cudnn_version"] = build.get("cudnn_version")
    except Exception as error:
        errors["build"] = _words(error)
    return facts


def _devices(tf, errors: dict) -> tuple[Device, ...]:
    """Every device TensorFlow lists; each GPU checked by a small computation on it."""
    try:
        physical = tf.config.list_physical_devices()
    except Exception as error:
        errors["devices"] = _words(error)
        return ()
    gpus = [d for d in physical if d.device_type == "GPU"]
    for gpu in gpus:  # before TensorFlow starts the GPUs: take memory as needed, not a whole GPU another job uses
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except Exception:  # already started, or a device that refuses: the check below says more
            pass
    logical, problem = [], None
    if gpus:
        try:
            logical = tf.config.list_logical_devices("GPU")
        except Exception as error:
            problem = _words(error)
    devices = []
    for device in physical:
        if device.device_type != "GPU":
            devices.append(Device(device.device_type, device.name))
            continue
        model = _gpu_model(tf, device)
        index = device.name.rsplit(":", 1)[-1]
        started = [d for d in logical if d.name.rsplit(":", 1)[-1] == index]
        if not started:
            reason = problem or "TensorFlow lists it but could not start it"
            devices.append(Device("GPU", device.name, model, usable=False, problem=reason))
            continue
        try:
            with tf.device(started[0].name):
                total = float(tf.reduce_sum(tf.matmul(tf.ones((8, 8)), tf.ones((8, 8)))).numpy())
            usable, reason = total == 512.0, None if total == 512.0 else f"a test product gave {total}, not 512"
        except Exception as error:
            usable, reason = False, _words(error)
        devices.append(Device("GPU", device.name, model, usable=usable, problem=reason))
    return tuple(devices)


def _gpu_model(tf, device) -> str | None:
    try:
        details = tf.config.experimental.get_device_details(device)
    except Exception:
        return None
    name, capability = details.get("device_name"), details.get("compute_capability")
    if name and capability:
        return f"{name}, compute capability {'.'.join(map(str, capability))}"
    return name


def _keras_auto_xla(keras) -> bool:
    """Keras' own answer: whether a small model compiled with jit_compile="auto" is compiled with XLA.

    Keras 3 decides "auto" in its Trainer: on TensorFlow, XLA only when a device other
    than the CPU is listed, without tf.distribute, and while op determinism is off (and not on a Mac's GPU).
    """
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", jit_compile="auto")
    return bool(model.jit_compile)


def _words(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
