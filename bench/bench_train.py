"""Images/s of the demo's ResNet50 training step on this CPU, per framework, side by side in one script.

    python bench/bench_train.py [--size 64] [--batch 16] [--steps 40] [--rounds 2]
        [--paths tf tf-xla jax torch] [--jax-python PY] [--torch-python PY]

Every path trains ResNet50 (random weights, one sigmoid output, AdamW, binary
cross-entropy) on batches of `--batch` crops of `--size` pixels:

- `tf`: vfrac's own path, `vfrac.model.train.Trainer` fed by `vfrac.data.pipeline.make_dataset`
  (augmentation, per-patient weights), TensorFlow backend, as `experiments.cv` runs it;
- `tf-stock`: the same with TensorFlow's own convolution gradients (what vfrac ran
  before `vfrac.model.conv_gradient`);
- `tf-no-onednn`: the same without TensorFlow's oneDNN kernels (`TF_ENABLE_ONEDNN_OPTS=0`;
  they are TensorFlow's default on x86, and vfrac's);
- `tf-lazy`: the same with the optimizer's variables made inside the first step, as
  Keras does by default (what vfrac ran before the Trainer built them itself): the
  first step traces twice;
- `tf-xla`: the same with the step compiled by XLA (`jit_compile=True`);
- `jax`: the same Trainer and tf.data input under Keras 3's JAX backend;
- `torch`: torchvision's ResNet50 in PyTorch (channels-last), the reference a user
  would reach for, on random batches held in memory (the pipeline costs about 1 % of
  a step: bench_pipeline.py).

Each path runs in a child process of its own (the Keras backend is fixed per process;
`--jax-python`/`--torch-python` name interpreters that have jax or torch + torchvision),
timed over `--steps` steps after 3 warm-up steps (tracing, compiling); the paths alternate round
by round and the best round counts. The first step (tracing, graph optimisation and the
step itself) is timed too: it is paid once per process. Ratios are against `tf`. A path
whose framework is missing is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PATHS = ("tf", "tf-stock", "tf-no-onednn", "tf-lazy", "tf-xla", "jax", "torch")
WARMUP_STEPS = 3
BACKENDS = {"tf": "tensorflow", "tf-stock": "tensorflow", "tf-no-onednn": "tensorflow", "tf-lazy": "tensorflow",
            "tf-xla": "tensorflow", "jax": "jax", "torch": "torch"}


def keras_rate(path: str, size: int, batch: int, steps: int, folder: Path, model_fn=None) -> dict:
    """{"rate": images/s of vfrac's Trainer over `steps` steps of the demo's pipeline after 3 warm-up
    steps, "first": seconds from the fit's start to the end of its first step}.

    Timed between batch ends inside one `fit`, so tracing and compiling (the first
    steps) do not count, and one fit suffices (Keras 3.15 under JAX 0.10 fails a second
    `fit` of the same model: "Attempt to donate the same buffer twice").
    """
    import keras

    from bench.bench_pipeline import fake_cache
    from vfrac.data.pipeline import Augmentation, make_dataset
    from vfrac.model.network import build_classifier
    from vfrac.model.train import Trainer

    entries, labels = fake_cache(folder, 8, 4)
    dataset, _ = make_dataset(entries, labels, input_size=size, training=True, batch_size=batch,
                              augmentation=Augmentation(strength=0.5))
    model_fn = model_fn or build_classifier
    if path == "tf-stock":
        import vfrac.model.conv_gradient

        vfrac.model.conv_gradient.use_fast_conv_gradients = lambda model: 0  # TensorFlow's own gradients
    if path == "tf-lazy":  # Keras' default: the optimizer builds its variables inside the first step
        from vfrac.model.train import VariableDecayAdamW

        VariableDecayAdamW.build = lambda optimizer, variables: None
    trainer = Trainer(lambda: model_fn(size), jit_compile=True if path == "tf-xla" else "auto")
    if path == "tf-lazy":
        del VariableDecayAdamW.build  # Keras' own again, called by the first step
    marks = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: marks.append(time.perf_counter()))
    keras.utils.disable_interactive_logging()
    started = time.perf_counter()
    trainer.model.fit(dataset.repeat().take(steps + WARMUP_STEPS), epochs=1, verbose=0, callbacks=[timer])
    return {"rate": steps * batch / (marks[-1] - marks[WARMUP_STEPS - 1]), "first": marks[0] - started}


def torch_rate(size: int, batch: int, steps: int, folder: Path) -> dict:
    """{"rate": images/s of torchvision's ResNet50 (channels-last) over `steps` steps of preloaded batches,
    "first": seconds of its first step}."""
    import numpy as np
    import torch
    import torchvision

    rng = np.random.default_rng(0)
    batches = [(torch.from_numpy(rng.normal(0, 50, (batch, 3, size, size)).astype(np.float32))
                .contiguous(memory_format=torch.channels_last),
                torch.from_numpy((np.arange(batch) % 2).astype(np.float32)[:, None])) for _ in range(4)]
    model = torchvision.models.resnet50(num_classes=1).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(images, targets):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()

    model.train()
    started = time.perf_counter()
    step(*batches[0])
    first = time.perf_counter() - started
    for images, targets in batches[1:WARMUP_STEPS]:
        step(images, targets)
    started = time.perf_counter()
    for k in range(steps):
        step(*batches[k % len(batches)])
    return {"rate": steps * batch / (time.perf_counter() - started), "first": first}


def profile_epoch(manifest: Path, cache_dir: Path, epochs: int = 2, top: int = 15) -> None:
    """Where one epoch of the demo's fold 0 goes: phases timed, trace counts, cProfile's top functions."""
    import cProfile
    import pstats

    import keras

    from experiments.config import PRESETS
    from vfrac.cohort import read_manifest
    from vfrac.data.cache import CropSettings, prepare_cohort
    from vfrac.data.pipeline import Augmentation, make_dataset
    from vfrac.data.splits import outer_folds
    from vfrac.model.network import build_classifier
    from vfrac.model.train import Trainer

    demo = PRESETS["demo"]
    cohort = read_manifest(manifest)
    entries = prepare_cohort(cohort.patients, CropSettings(), cache_dir).entries
    labels = {p.patient_id: int(p.is_malignant) for p in cohort.patients}
    split = outer_folds(list(labels), [labels[p] for p in labels], demo["folds"], seed=0)[0]
    train, _ = make_dataset({p: entries[p] for p in split.train}, labels, demo["input_size"], training=True,
                            batch_size=demo["batch_size"], augmentation=Augmentation(strength=0.5))
    steps = int(train.cardinality())
    trainer = Trainer(lambda: build_classifier(demo["input_size"]))
    keras.utils.disable_interactive_logging()
    times = []
    timer = keras.callbacks.LambdaCallback(on_epoch_begin=lambda *_: times.append(time.perf_counter()),
                                           on_epoch_end=lambda *_: times.append(time.perf_counter()))
    profiler = cProfile.Profile()
    profiler.enable()
    started = time.perf_counter()
    trainer.fit(train, epochs=epochs, callbacks=[timer])
    total = time.perf_counter() - started
    profiler.disable()
    epoch_seconds = [end - begin for begin, end in zip(times[::2], times[1::2], strict=True)]
    traces = trainer.model.train_function.experimental_get_tracing_count() \
        if hasattr(trainer.model.train_function, "experimental_get_tracing_count") else "n/a"
    print(f"fold 0: {len(split.train)} patients, {steps} steps of {demo['batch_size']} per epoch; "
          f"epochs {', '.join(f'{s:.1f}' for s in epoch_seconds)} s (the first traces the step; "
          f"{traces} trace(s) of the training step); after the epochs (BatchNorm recalibration): "
          f"{total - (times[-1] - times[0]):.1f} s")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def child(path: str, size: int, batch: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        if path == "torch":
            return torch_rate(size, batch, steps, Path(folder))
        return keras_rate(path, size, batch, steps, Path(folder))


def run_child(path: str, python: str, size: int, batch: int, steps: int, threads: int | None) -> dict:
    """One measurement in a fresh process: {"rate": images/s, "first": first step's seconds} or {"error": why}."""
    env = os.environ | {"KERAS_BACKEND": BACKENDS[path], "TF_CPP_MIN_LOG_LEVEL": "3",
                        **({"TF_ENABLE_ONEDNN_OPTS": "0"} if path == "tf-no-onednn" else {})}
    if threads:
        env |= {name: str(threads) for name in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")}
    command = [python, __file__, "--child", path, "--size", str(size), "--batch", str(batch), "--steps", str(steps)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    except OSError as error:
        return {"error": f"cannot run {python}: {error.strerror}"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:160]}
    return json.loads(lines[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--jax-python", default=sys.executable, help="interpreter with jax installed")
    parser.add_argument("--torch-python", default=sys.executable, help="interpreter with torch and torchvision")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the frameworks' own)")
    parser.add_argument("--profile", type=Path, metavar="MANIFEST",
                        help="instead: profile epochs of fold 0 of this cohort (e.g. data/demo/manifest.csv)")
    parser.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile:
        profile_epoch(args.profile, args.cache_dir)
        return
    if args.child:
        print(json.dumps(child(args.child, args.size, args.batch, args.steps)))
        return
    from bench.bench_load import cpu_name

    pythons = {"jax": args.jax_python, "torch": args.torch_python}
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; ResNet50 training step, input {args.size}, "
          f"batch {args.batch}, {args.steps} steps per measurement, best of {args.rounds} rounds")
    results: dict[str, dict] = {}
    for round_number in range(args.rounds):
        for path in args.paths:
            measured = run_child(path, pythons.get(path, sys.executable), args.size, args.batch, args.steps,
                                 args.threads)
            print(f"  round {round_number + 1}, {path}: "
                  + (f"{measured['rate']:.1f} images/s, first step {measured['first']:.1f} s" if "rate" in measured
                     else measured["error"]), flush=True)
            best = results.get(path, {})
            if "rate" in measured and measured["rate"] > best.get("rate", 0.0):
                results[path] = measured
            elif not best:
                results[path] = measured
    base, base_first = results.get("tf", {}).get("rate"), results.get("tf", {}).get("first")
    print("| path | images/s | ratio to tf | first step | ratio to tf |\n| --- | --- | --- | --- | --- |")
    for path in args.paths:
        rate, first = results[path].get("rate"), results[path].get("first")
        if not rate:
            print(f"| {path} | {results[path]['error']} | | | |")
            continue
        ratio = f"{rate / base:.2f}x" if base else ""
        first_ratio = f"{first / base_first:.2f}x" if base_first else ""
        print(f"| {path} | {rate:.1f} | {ratio} | {first:.1f} s | {first_ratio} |")


if __name__ == "__main__":
    main()
