"""How fast the data pipeline, the training step and inference run on this machine; ratios measured side by side.

    python -m lib.bench                          # CPU or CUDA, whatever is here; all models
    python -m lib.bench --device cpu --quick     # about a minute on 2 CPU cores
    python -m lib.bench --device cuda --models robust_resnet64 light_resnet18 --data-dir data --json bench.json

Measures, with the report's full augmentation set (augment=full, MixUp/CutMix probability 0.5):
- data pipeline: the per-sample torchvision loader in this one process (0 workers, one torch thread as in a
  DataLoader worker: images/s per core) and the batched device loader (all threads; its chunks as configured,
  and one batch per BatchAugment call as before chunks), taking turns in one run;
- training step per model: the step lib.train runs on this device (its amp / channels_last / compile settings)
  and a plain eager fp32 NCHW step (TF32 as torch's defaults leave it: recorded), interleaved, median of repeats;
- the configured step fed by the device loader, interleaved with the others: seconds per 50,000-image epoch
  (data included, validation not: the steady state) and the data pipeline's measured share of step time;
- a real solo epoch per model: ``lib.train`` for 2 epochs on CIFAR-10 (--data-dir) or synthetic files of its size,
  each epoch's wall seconds with validation and checkpoint writes (the second one is the steady epoch);
- aten ops per training step of the model and of the device loader (``lib.opcount``; --ops);
- inference per model (eval mode, the configured precision and memory format); peak memory.
Data are random uint8 images unless --data-dir is given (speed does not depend on content). Numbers in
report/benchmarks.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .augment import default_chunk_images, make_train_loader, resolve_channels_last
from .batch_augment import BatchAugment
from .common import ArgumentParser, UserError, amp_dtype, atomic_write_text, resolve_device, run_cli
from .config import make_config
from .models import build_model, list_models
from .train import compile_model, make_criterion, make_optimizer, make_scheduler, train, train_step

# Sizes per mode. Data: `data_rounds` turns of one per-sample batch and one epoch of each batched loader (batch
# 128, the report's). Steps: `repeats` interleaved timings of `steps` steps at `step_batch`; median.
# Solo epoch: `epoch_train` training and `epoch_val` validation images (CUDA: CIFAR-10's 50,000 and 10,000).
FULL = {"batch": 128, "data_rounds": 3, "step_batch": 32, "steps": 2, "repeats": 7, "infer_batch": 128,
        "epoch_train": 500, "epoch_val": 250}
QUICK = {"batch": 128, "data_rounds": 1, "step_batch": 16, "steps": 1, "repeats": 3, "infer_batch": 32,
         "epoch_train": 100, "epoch_val": 50}
CUDA = {"batch": 128, "data_rounds": 2, "step_batch": 128, "steps": 20, "loader_steps": 128, "repeats": 3,
        "infer_batch": 512, "epoch_train": 50_000, "epoch_val": 10_000}  # a real epoch: CIFAR-10's sizes
# --tiny (a dry run of the chain, e.g. `make gpu-dry-run`): every model at 8 base channels and 1 block per group
TINY = {"batch": 32, "data_rounds": 1, "step_batch": 4, "steps": 1, "repeats": 1, "infer_batch": 8,
        "epoch_train": 50, "epoch_val": 20}
TINY_MODEL = {"base_channels": 8, "blocks_per_group": 1}
QUICK_MODELS = ("light_resnet18", "robust_resnet64")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:  # the model name, e.g. "AMD EPYC"
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)
    except ImportError:  # Windows
        return float("nan")


# ----------------------------------------------------------------------------------------------------
@contextmanager
def _one_thread():
    """As in a DataLoader worker process, which runs torch with one intra-op thread: images/s per core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _interleaved(fns: dict[str, Callable[[], int]], rounds: int, device: torch.device) -> dict[str, float]:
    """Images/s of each function (it returns how many images it did), taking turns for ``rounds`` rounds so that
    drifting machine load hits all of them alike; total images / total seconds."""
    for fn in fns.values():
        fn()  # warm-up: allocations, tables, DataLoader start
    images, seconds = dict.fromkeys(fns, 0), dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            images[name] += fn()
            _sync(device)
            seconds[name] += time.perf_counter() - t0
    return {name: images[name] / seconds[name] for name in fns}


def _batches(loader):
    """Batches from a loader forever, epoch after epoch."""
    while True:
        yield from loader


def bench_data(cfg, device, sizes, kornia: bool = False, quick: bool = False) -> dict[str, Any]:
    """Images/s of the per-sample loader (this process, no workers) and the batched device loader, in turns."""
    bs, rounds = sizes["batch"], sizes["data_rounds"]
    rng = np.random.default_rng(0)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    # at least two of the device loader's chunks and 16 batches; each turn takes whole epochs, so that every turn
    # pays for its chunks' augmentation
    n = max(16 * bs, 2 * default_chunk_images(device))
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, len(x)).astype(np.int64)
    per_sample = _batches(make_train_loader(dataclasses.replace(cfg, num_workers=0), x[:4 * bs], y[:4 * bs], mean,
                                            std, device, "torchvision"))
    chunked = make_train_loader(cfg, x, y, mean, std, device, "device")
    one_batch = make_train_loader(cfg, x, y, mean, std, device, "device")
    one_batch.chunk_images = bs  # one BatchAugment call per batch: the loader before chunks

    def epoch(loader):
        for _ in loader:
            pass
        return len(loader) * bs

    def one_core(fn, *args):
        with _one_thread():
            return fn(*args)

    def take(batches, k):
        for _ in range(k):
            next(batches)
        return k * bs

    fns = {"per_sample": lambda: one_core(take, per_sample, 1), "batched": lambda: epoch(chunked),
           "batched_per_batch": lambda: epoch(one_batch)}
    if device.type == "cpu":  # per core too: the fair comparison, and robust to other processes on the machine
        fns["batched_one_thread"] = lambda: one_core(epoch, chunked)
        fns["batched_per_batch_one_thread"] = lambda: one_core(epoch, one_batch)
    rates = _interleaved(fns, rounds, device)
    result: dict[str, Any] = {"per_sample_img_s": rates["per_sample"], "batched_img_s": rates["batched"],
                              "batched_per_batch_img_s": rates["batched_per_batch"],
                              "chunk_images": chunked.chunk_images, "batched_epoch_images": n,
                              "ratio": rates["batched"] / rates["per_sample"], "batch_size": bs,
                              "per_sample_workers": 0, "per_sample_threads": 1, "cpu_cores": os.cpu_count(),
                              "torch_threads": torch.get_num_threads()}
    if "batched_one_thread" in rates:
        result["batched_one_thread_img_s"] = rates["batched_one_thread"]
        result["batched_per_batch_one_thread_img_s"] = rates["batched_per_batch_one_thread"]
        result["ratio_per_core"] = rates["batched_one_thread"] / rates["per_sample"]
    if not quick:
        result.update(bench_transform_only(cfg, x[:32], mean, std, rounds))
    if kornia:
        result.update(bench_kornia(cfg, x[:bs], mean, std, device, rounds))
    return result


def bench_chunks(cfg, device, rounds: int) -> dict[str, dict[int, float]]:
    """Device loader images/s by chunk size (images per BatchAugment call), epochs of the largest size taking
    turns, at least 6 rounds: for the benchmark's augmentation set and the paper profile's (--chunk-sweep). On the
    CPU with one thread (per core: 2-thread timings collapse when other processes hold a core, see
    report/benchmarks.md)."""
    rounds = max(6, rounds)
    chunks = (128, 256, 512, 1024, 4096) if device.type == "cpu" else (1024, 4096, 16_384, 32_768)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (chunks[-1], 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, len(x)).astype(np.int64)
    paper = make_config("paper", device=cfg.device)
    sets = {f"augment={cfg.augment}, mix_prob={cfg.mix_prob}": cfg,
            f"paper profile (augment={paper.augment}, mix_prob={paper.mix_prob})": dataclasses.replace(
                cfg, augment=paper.augment, mix_prob=paper.mix_prob)}
    out = {}
    for label, c in sets.items():
        loaders = {}
        for chunk in chunks:
            loaders[chunk] = make_train_loader(c, x, y, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26], device, "device")
            loaders[chunk].chunk_images = chunk

        def epoch(loader):
            for _ in loader:
                pass
            return len(loader) * loader.batch_size

        with _one_thread() if device.type == "cpu" else contextlib.nullcontext():
            out[label] = _interleaved({k: (lambda l=l: epoch(l)) for k, l in loaders.items()}, rounds, device)
    return out


def bench_transform_only(cfg, x, mean, std, rounds: int) -> dict[str, float]:
    """The per-sample transform alone (no DataLoader, collate or mixing), one core: on PIL images, as our loader
    and the report's pipeline feed it, and on uint8 tensors (why the loader feeds PIL)."""
    from PIL import Image
    from torchvision.transforms import v2

    from .augment import train_transform

    steps = list(train_transform(cfg, mean, std).transforms)
    tensor_t = v2.Compose([t for t in steps if not isinstance(t, v2.ToImage)])  # the tensor kernels, unwrapped
    pil_t = v2.Compose(steps)
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in x]
    pils = [Image.fromarray(a) for a in x]
    with _one_thread():
        rates = _interleaved({"tensor": lambda: len([tensor_t(i) for i in tensors]),
                              "pil": lambda: len([pil_t(i) for i in pils])}, rounds, torch.device("cpu"))
    return {"per_sample_transform_tensor_img_s": rates["tensor"], "per_sample_transform_pil_img_s": rates["pil"]}


def bench_kornia(cfg, x, mean, std, device, rounds: int) -> dict[str, Any]:
    """kornia's per-image augmentations for the same set (its RandAugment picks ops per batch, not per image)."""
    import kornia
    import kornia.augmentation as K
    from kornia.augmentation.auto import RandAugment

    j = cfg.color_jitter
    aug = K.AugmentationSequential(
        K.RandomCrop((32, 32), padding=4), K.RandomHorizontalFlip(), K.ColorJitter(j, j, j, j / 4, p=1.0),
        K.RandomRotation(cfg.rotation_degrees, p=1.0), RandAugment(n=cfg.randaugment_ops, m=cfg.randaugment_magnitude),
        K.Normalize(torch.tensor(mean), torch.tensor(std)), K.RandomErasing(p=cfg.erasing_prob)).to(device)
    xb = torch.from_numpy(x).to(device).permute(0, 3, 1, 2)
    ours = BatchAugment(cfg, mean, std)
    rates = _interleaved({"kornia": lambda: len(aug(xb.float() / 255)), "ours": lambda: len(ours(xb))},
                         rounds, device)
    return {"kornia_version": kornia.__version__, "kornia_img_s": rates["kornia"],
            "batch_augment_img_s": rates["ours"]}


# ----------------------------------------------------------------------------------------------------
def _step_setup(cfg, name, device, *, dtype, channels_last, compile_, batch, loader=None):
    """A function running ``steps`` training steps on one fixed batch, or fed by ``loader`` (data time included)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(name, **cfg.model_overrides()).to(device, memory_format=fmt)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch=1000)
    criterion = make_criterion(cfg)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    step_model = compile_model(model, cuda_graphs=cfg.cuda_graphs) if compile_ else model
    step_model.train()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    x = x.contiguous(memory_format=fmt)
    soft = torch.softmax(torch.randn(batch, 10, generator=g), 1).to(device)

    batches = _batches(loader) if loader is not None else None

    def run(steps: int) -> None:
        for _ in range(steps):
            xb, sb = next(batches) if batches is not None else (x, soft)
            loss, *_ = train_step(step_model, xb, sb, optimizer, scheduler, criterion, scaler, dtype)
        loss.item()  # one sync at the end, as the training loop's periodic check

    return run


def bench_train_steps(cfg, models, device, sizes) -> dict[str, Any]:
    """Configured step (lib.train's settings for this device) vs plain eager fp32 NCHW, interleaved; and the
    configured step fed by the device loader: what an epoch costs with its data, and so the data pipeline's
    measured share of step time. The fed variant runs `loader_steps` steps a repeat, one epoch of random images
    augmented as one chunk (on CUDA 128 steps: the loader's 16,384-image chunk), so every repeat pays for one."""
    dtype = amp_dtype(device) if cfg.amp else None
    channels_last = resolve_channels_last(cfg.channels_last, device)
    bs, steps = sizes["step_batch"], sizes["steps"]
    loader_steps = sizes.get("loader_steps", steps)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (loader_steps * bs, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images)).astype(np.int64)
    out: dict[str, Any] = {"settings": {"amp_dtype": str(dtype).replace("torch.", "") if dtype else None,
                                        "channels_last": channels_last, "compile": cfg.compile,
                                        "batch_size": bs, "steps_per_repeat": steps,
                                        "loader_steps_per_repeat": loader_steps,
                                        "repeats": sizes["repeats"], "plain_fp32_tf32": tf32_state(device)},
                           "configured": {}, "plain": {}, "with_loader": {}, "ratio": {}}
    for name in models:
        variants = {"configured": _step_setup(cfg, name, device, dtype=dtype, channels_last=channels_last,
                                              compile_=cfg.compile, batch=bs),
                    "plain": _step_setup(cfg, name, device, dtype=None, channels_last=False, compile_=False,
                                         batch=bs),
                    "with_loader": _step_setup(cfg, name, device, dtype=dtype, channels_last=channels_last,
                                               compile_=cfg.compile, batch=bs, loader=make_train_loader(
                                                   dataclasses.replace(cfg, batch_size=bs), images, labels,
                                                   [0.49, 0.48, 0.45], [0.25, 0.24, 0.26], device, "device"))}
        for run in variants.values():
            run(3 if cfg.compile or device.type == "cuda" else 2)  # warm-up (and compilation)
        n_steps = {k: loader_steps if k == "with_loader" else steps for k in variants}
        times = {k: [] for k in variants}
        for _ in range(sizes["repeats"]):  # interleaved, so drifting machine load hits both alike
            for k, run in variants.items():
                times[k].append(_seconds(lambda: run(n_steps[k]), device))
        for k in variants:
            out[k][name] = n_steps[k] * bs / statistics.median(times[k])
        out["ratio"][name] = out["configured"][name] / out["plain"][name]
        del variants
    return out


def tf32_state(device: torch.device) -> dict[str, bool] | None:
    """Whether fp32 convolutions and matmuls run on TF32 tensor cores (A100 and later): torch's defaults leave
    cuDNN's convolutions on TF32 and matmuls in full fp32, so the 'plain fp32' step is partly TF32 there."""
    if device.type != "cuda":
        return None
    return {"cudnn_conv": bool(torch.backends.cudnn.allow_tf32), "matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


def bench_epoch(cfg, models, device, sizes, data_dir: str | None = None) -> dict[str, Any]:
    """Per model, a real ``lib.train`` run of 2 epochs alone on the device, with lib.train's settings: wall seconds
    of each epoch from the end of the one before (training, validation, checkpoint and history writes; the first
    from the start of its training loop). The second is the steady one: no cuDNN autotuning or compilation.
    Data: CIFAR-10 from ``data_dir`` (class-balanced subsets of the sizes' images), else synthetic CIFAR-format
    files of those sizes."""
    from .smoke_data import write_smoke_dataset

    n_train, n_val = sizes["epoch_train"], sizes["epoch_val"]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_epoch_") as tmp:
        if data_dir is None:
            data_dir = os.path.join(tmp, "data")
            write_smoke_dataset(data_dir, per_batch=-(-n_train // 5), test_count=n_val, kaggle_count=10)
        for name in models:
            marks: list[float] = []
            run_cfg = make_config("paper", model=name, epochs=2, data_dir=data_dir, out=os.path.join(tmp, name),
                                  train_size=n_train, val_size=n_val, device=cfg.device, amp=cfg.amp,
                                  channels_last=cfg.channels_last, compile=cfg.compile, cuda_graphs=cfg.cuda_graphs,
                                  progress=False, seed=0, **cfg.model_overrides())
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # its epoch lines go with the log, not the table
                summary = train(run_cfg, on_epoch=lambda row: marks.append(time.perf_counter()))
            recorded = json.loads(Path(run_cfg.out, "config.json").read_text())
            out[name] = {"train_images": recorded["n_train"], "val_images": recorded["n_val"],
                         "data": recorded["data_source"], "data_official": recorded["data_official"],
                         "epoch_s": marks[1] - marks[0],
                         # history.csv's epoch_seconds: training + validation, the checkpoint left out
                         "first_epoch_s": summary["history"][0]["epoch_seconds"],
                         "run_s": marks[1] - t0}  # from the call: data loading and model set-up included
    return out


def bench_inference(cfg, models, device, sizes) -> dict[str, float]:
    dtype = amp_dtype(device) if cfg.amp else None
    fmt = torch.channels_last if resolve_channels_last(cfg.channels_last, device) else torch.contiguous_format
    bs = sizes["infer_batch"]
    out = {}
    for name in models:
        model = build_model(name, **cfg.model_overrides()).to(device, memory_format=fmt).eval()
        x = torch.randn(bs, 3, 32, 32).to(device).contiguous(memory_format=fmt)

        def run(reps: int) -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                for _ in range(reps):
                    logits = model(x)
            logits.float().sum().item()

        run(1)
        reps = max(1, sizes["steps"])
        out[name] = reps * bs / statistics.median(_seconds(lambda: run(reps), device)
                                                  for _ in range(sizes["repeats"]))
    return out


def bench_ops(cfg, models, device) -> dict[str, Any]:
    """Aten ops per training step: each model's step and the device loader's share of a step (lib.opcount), for
    the benchmark's augmentation set and the paper profile's. Without CUDA, the loader runs on the meta device
    (CUDA's code path, nothing computed) and the step on the CPU in bf16 autocast and NHWC, standing in for CUDA's,
    on a narrow copy of the model (base width 8, batch 2: the same ops, far less arithmetic)."""
    from .opcount import loader_ops, step_ops

    gpu = device.type == "cuda"
    dtype = (amp_dtype(device) if cfg.amp else None) if gpu else torch.bfloat16
    where = torch.device("meta") if not gpu else device
    step_cfg = cfg if gpu else dataclasses.replace(cfg, channels_last=True, base_channels=8)
    paper = make_config("paper", device=cfg.device)
    sets = {f"augment={cfg.augment}, mix_prob={cfg.mix_prob}": cfg,
            f"paper profile (augment={paper.augment}, mix_prob={paper.mix_prob})": dataclasses.replace(
                cfg, augment=paper.augment, mix_prob=paper.mix_prob)}
    steps = 2 * 16_384 // cfg.batch_size  # two GPU chunks
    loader = {k: {"chunked": loader_ops(c, where, steps), "per_batch": loader_ops(c, where, 4, cfg.batch_size)}
              for k, c in sets.items()}
    model = {m: step_ops(step_cfg, m, device, dtype, cfg.batch_size if gpu else 2) for m in models}
    return {"loader_counted_on": where.type, "step_counted_on": f"{device.type}, {str(dtype).replace('torch.', '')}",
            "batch_size": cfg.batch_size, "model_step": model, "loader_per_step": loader,
            "share": {m: {k: v["chunked"]["per_step"] / n for k, v in loader.items()} for m, n in model.items()}}


# ----------------------------------------------------------------------------------------------------
def run_bench(device_name_: str = "auto", quick: bool = False, models=None, kornia: bool = False,
              overrides: dict | None = None, epoch: bool = True, ops: bool = True, data_dir: str | None = None,
              chunk_sweep: bool = False, tiny: bool = False,
              on_phase: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every measurement, phase by phase; ``on_phase(result)`` after each one with what is measured so far
    (``result["complete"]`` turns True at the end): a benchmark cut off by a time limit keeps its finished phases."""
    device = resolve_device(device_name_)
    sizes = TINY if tiny else QUICK if quick else (CUDA if device.type == "cuda" else FULL)
    models = list(models or (QUICK_MODELS if quick or tiny else list_models()))
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise UserError(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(list_models())}")
    overrides = {**(TINY_MODEL if tiny else {}), **(overrides or {})}
    cfg = make_config("paper", augment="full", mix_prob=0.5, device=device.type, **overrides)
    if data_dir is not None:
        from .data import find_cifar_dir
        find_cifar_dir(data_dir)  # a UserError naming the folder now, not after minutes of timing
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as lib.train: fixed shapes, autotuned once
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "device": device_name(device), "device_type": device.type, "quick": quick, "tiny": tiny, "complete": False,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "augment": cfg.augment, "mix_prob": cfg.mix_prob, "models": models, "phase_seconds": {},
        "load_average_before_after": [_load_average(), None]}  # other processes skew CPU timings

    def phase(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t = time.perf_counter()
        result.update(fn())
        result["phase_seconds"][name] = time.perf_counter() - t
        result["seconds"], result["peak_memory_mb"] = time.perf_counter() - t0, peak_memory_mb(device)
        if on_phase is not None:
            on_phase(result)

    phase("data", lambda: {"data_pipeline": bench_data(cfg, device, sizes, kornia=kornia, quick=quick)})
    if ops:  # early: quick, and counts do not depend on the machine's load
        phase("ops", lambda: {"ops": bench_ops(cfg, models, device)})
    if chunk_sweep:
        phase("chunks", lambda: {"chunk_sweep_img_s": bench_chunks(cfg, device, sizes["data_rounds"])})
    phase("train_step", lambda: _step_results(bench_train_steps(cfg, models, device, sizes),
                                              result["data_pipeline"], models))
    phase("inference", lambda: {"inference_img_s": bench_inference(cfg, models, device, sizes)})
    if epoch:  # a real lib.train epoch: training, validation and checkpoint
        phase("solo_epoch", lambda: {"solo_epoch": bench_epoch(cfg, models, device, sizes, data_dir)})
    result["load_average_before_after"][1] = _load_average()
    result["complete"] = True
    if on_phase is not None:
        on_phase(result)
    return result


def _step_results(steps: dict[str, Any], data: dict[str, Any], models) -> dict[str, Any]:
    # the batched loader runs on the training stream, so its time adds to the step's
    data_s = 1 / data["batched_img_s"]
    return {
        "train_step_img_s": steps["configured"], "train_step_plain_img_s": steps["plain"],
        "train_step_ratio": steps["ratio"], "train_step_settings": steps["settings"],
        "data_loading_share": {m: data_s / (data_s + 1 / steps["configured"][m]) for m in models},
        # measured side by side: the configured step on a fixed batch vs fed by the device loader
        "train_step_with_loader_img_s": steps["with_loader"],
        "data_share_measured": {m: max(0.0, 1 - steps["with_loader"][m] / steps["configured"][m]) for m in models},
        # the steady state: a 50,000-image epoch at the step's batch size, data included, validation excluded
        "epoch_seconds_50k": {m: 50_000 / steps["with_loader"][m] for m in models},
        "per_sample_cores_to_feed": {m: steps["configured"][m] / data["per_sample_img_s"] for m in models}}


def format_table(result: dict[str, Any]) -> str:
    import pandas as pd

    d = result["data_pipeline"]
    mode = " [tiny: a dry run]" if result.get("tiny") else " [quick]" if result["quick"] else ""
    lines = [f"device: {result['device']} (torch {result['versions']['torch']}){mode}",
             f"data pipeline, augment={result['augment']}, mix_prob={result['mix_prob']}, batch {d['batch_size']}: "
             f"per-sample {d['per_sample_img_s']:,.0f} img/s (0 workers, 1 thread: per core) | "
             f"batched {d['batched_img_s']:,.0f} img/s ({d['torch_threads']} threads) | ratio {d['ratio']:.1f}x"]
    lines.append(f"batched: {d['chunk_images']:,} images per BatchAugment call; one call per batch (before "
                 f"chunks) {d['batched_per_batch_img_s']:,.0f} img/s")
    if "ratio_per_core" in d:
        lines.append(f"per core (both on one thread): batched {d['batched_one_thread_img_s']:,.0f} img/s "
                     f"(one call per batch {d['batched_per_batch_one_thread_img_s']:,.0f}), ratio "
                     f"{d['ratio_per_core']:.1f}x")
    if "per_sample_transform_tensor_img_s" in d:
        tensor_rate, pil_rate = d["per_sample_transform_tensor_img_s"], d["per_sample_transform_pil_img_s"]
        lines.append(f"per-sample transform alone (no loader, one core): uint8 tensors {tensor_rate:,.0f} img/s, "
                     f"PIL {pil_rate:,.0f} img/s")
    if "kornia_img_s" in d:
        lines.append(f"kornia {d['kornia_version']}: {d['kornia_img_s']:,.0f} img/s vs BatchAugment "
                     f"{d['batch_augment_img_s']:,.0f} img/s (augmentation only, one batch repeated)")
    threads = " (one thread)" if result["device_type"] == "cpu" else ""
    for label, rates in result.get("chunk_sweep_img_s", {}).items():
        lines.append(f"device loader by chunk size{threads}, {label}: "
                     + ", ".join(f"{int(k):,}: {v:,.0f} img/s" for k, v in rates.items()))
    s = result["train_step_settings"]
    columns = {
        "train img/s (configured)": result["train_step_img_s"],
        "train img/s (plain fp32 NCHW)": result["train_step_plain_img_s"],
        "ratio": result["train_step_ratio"],
        "inference img/s": result["inference_img_s"],
        "batched data share": result["data_loading_share"],
        "data share (measured)": result["data_share_measured"],
        "s per 50k epoch (steady state)": result["epoch_seconds_50k"]}
    solo = result.get("solo_epoch")
    if solo:
        columns["solo epoch s"] = {m: r["epoch_s"] for m, r in solo.items()}
        columns["first epoch s"] = {m: r["first_epoch_s"] for m, r in solo.items()}
    tf32 = s.get("plain_fp32_tf32")
    lines.append(f"train step: batch {s['batch_size']}, configured = amp {s['amp_dtype']}, channels_last "
                 f"{s['channels_last']}, compile {s['compile']}; median of {s['repeats']} repeats; plain fp32: "
                 + ("no TF32 here" if tf32 is None else
                    f"TF32 convolutions {'on' if tf32['cudnn_conv'] else 'off'}, TF32 matmuls "
                    f"{'on' if tf32['matmul'] else 'off'}"))
    lines.append(pd.DataFrame(columns).to_markdown(floatfmt=",.2f"))
    if solo:
        r = next(iter(solo.values()))
        lines.append(f"solo epoch: lib.train's epoch 2 of 2, from the end of epoch 1 (training, validation, "
                     f"checkpoint), {r['train_images']:,} training / {r['val_images']:,} validation images, "
                     f"{r['data']} data{' (official files)' if r['data_official'] else ''}; first epoch: training "
                     f"+ validation, with the warm-up (cuDNN autotuning, compilation)")
    ops = result.get("ops")
    if ops:
        lines.append(f"aten ops per training step (loader counted on {ops['loader_counted_on']}, step on "
                     f"{ops['step_counted_on']}, batch {ops['batch_size']}):")
        for k, v in ops["loader_per_step"].items():
            c, b = v["chunked"], v["per_batch"]
            lines.append(f"  device loader, {k}: {c['per_step']:.1f} per step ({c['device_per_step']:.1f} on the "
                         f"device, chunks of {c['chunk_images']:,}); one call per batch: {b['per_step']:.1f}")
        lines.append("  model step: " + ", ".join(
            f"{m} {n:,} (loader share " + ", ".join(f"{100 * x:.1f}%" for x in ops["share"][m].values()) + ")"
            for m, n in ops["model_step"].items()))
    lines.append(f"peak memory: {result['peak_memory_mb']:,.0f} MiB; {result['seconds']:.1f} s; load average "
                 f"before/after {result['load_average_before_after']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m lib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes, two models: under a minute on 2 cores")
    parser.add_argument("--tiny", action="store_true",
                        help="a dry run of the chain: a few images, every model at 8 base channels and 1 block per "
                             "group (seconds; the numbers mean nothing)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--models", nargs="+", help=f"subset of {', '.join(list_models())}")
    parser.add_argument("--kornia", action="store_true", help="also time kornia's augmentations (comparison)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="override the configured step's memory format (default: lib.train's choice)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="override mixed precision for the configured step")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the configured step's model")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                        help="with --compile: CUDA graphs (inductor's reduce-overhead mode)")
    parser.add_argument("--data-dir", help="CIFAR-10 for the solo epoch (default: synthetic files of its size)")
    parser.add_argument("--no-epoch", dest="epoch", action="store_false", help="skip the solo lib.train epoch")
    parser.add_argument("--no-ops", dest="ops", action="store_false", help="skip the aten op counts")
    parser.add_argument("--chunk-sweep", action="store_true",
                        help="also time the device loader at several chunk sizes (images per BatchAugment call)")
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("channels_last", "amp", "compile", "cuda_graphs")
                 if getattr(args, k) is not None}
    def write(result: dict[str, Any]) -> None:  # after every phase
        if args.json:
            atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")

    result = run_bench(args.device, quick=args.quick, models=args.models, kornia=args.kornia, overrides=overrides,
                       epoch=args.epoch, ops=args.ops, data_dir=args.data_dir, chunk_sweep=args.chunk_sweep,
                       tiny=args.tiny, on_phase=write)
    print(format_table(result))
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
