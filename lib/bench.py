"""How fast the data pipeline, the training step and inference run on this machine; ratios measured side by side.

    python -m lib.bench                          # CPU or CUDA, whatever is here; all models
    python -m lib.bench --device cpu --quick     # under a minute on 2 CPU cores
    python -m lib.bench --device cuda --json report/bench_cuda.json

Measures, with the report's full augmentation set (augment=full, MixUp/CutMix probability 0.5):
- data pipeline: the per-sample torchvision loader in this one process (0 workers, one torch thread as in a
  DataLoader worker: images/s per core) and the batched device loader (all threads), taking turns in one run;
- training step per model: the step lib.train runs on this device (its amp / channels_last / compile settings)
  and a plain eager fp32 NCHW step, interleaved, median of repeats;
- inference per model (eval mode, the configured precision and memory format); peak memory; and, from these,
  the share of step time the batched loader would take;
- the configured step fed by the device loader, interleaved with the others: seconds per 50,000-image epoch
  (data included, validation not) and the data pipeline's measured share of step time.
Data are random uint8 images (speed does not depend on content). Numbers in report/benchmarks.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .augment import make_train_loader, resolve_channels_last
from .batch_augment import BatchAugment
from .common import ArgumentParser, UserError, amp_dtype, atomic_write_text, resolve_device, run_cli
from .config import make_config
from .models import build_model, list_models
from .train import make_criterion, make_optimizer, make_scheduler, train_step

# Sizes per mode. Data: `data_rounds` turns of one per-sample batch and `batched_per_round` batched ones (batch
# 128, the report's). Steps: `repeats` interleaved timings of `steps` steps at `step_batch`; median.
FULL = {"batch": 128, "data_rounds": 4, "batched_per_round": 5, "step_batch": 32, "steps": 2, "repeats": 7,
        "infer_batch": 128}
QUICK = {"batch": 128, "data_rounds": 1, "batched_per_round": 3, "step_batch": 16, "steps": 1, "repeats": 3,
         "infer_batch": 32}
CUDA = {"batch": 128, "data_rounds": 4, "batched_per_round": 25, "step_batch": 128, "steps": 20, "repeats": 5,
        "infer_batch": 512}
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
    bs, rounds, per_round = sizes["batch"], sizes["data_rounds"], sizes["batched_per_round"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4 * bs, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, len(x)).astype(np.int64)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    per_sample = _batches(make_train_loader(dataclasses.replace(cfg, num_workers=0), x, y, mean, std, device,
                                            "torchvision"))
    batched = _batches(make_train_loader(cfg, x, y, mean, std, device, "device"))

    def take(batches, n):
        for _ in range(n):
            next(batches)
        return n * bs

    def take_one_core(batches, n):
        with _one_thread():
            return take(batches, n)

    fns = {"per_sample": lambda: take_one_core(per_sample, 1), "batched": lambda: take(batched, per_round)}
    if device.type == "cpu":  # per core too: the fair comparison, and robust to other processes on the machine
        fns["batched_one_thread"] = lambda: take_one_core(batched, max(1, per_round // 2))
    rates = _interleaved(fns, rounds, device)
    result: dict[str, Any] = {"per_sample_img_s": rates["per_sample"], "batched_img_s": rates["batched"],
                              "ratio": rates["batched"] / rates["per_sample"], "batch_size": bs,
                              "per_sample_workers": 0, "per_sample_threads": 1, "cpu_cores": os.cpu_count(),
                              "torch_threads": torch.get_num_threads()}
    if "batched_one_thread" in rates:
        result["batched_one_thread_img_s"] = rates["batched_one_thread"]
        result["ratio_per_core"] = rates["batched_one_thread"] / rates["per_sample"]
    if not quick:
        result.update(bench_transform_only(cfg, x[:32], mean, std, rounds))
    if kornia:
        result.update(bench_kornia(cfg, x[:bs], mean, std, device, rounds))
    return result


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
    model = build_model(name).to(device, memory_format=fmt)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch=1000)
    criterion = make_criterion(cfg)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    step_model = torch.compile(model) if compile_ else model
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
    configured step fed by the device loader (BatchAugment + BatchMix on 8 batches of random images, cycled):
    what an epoch costs with its data, and so the data pipeline's measured share of step time."""
    dtype = amp_dtype(device) if cfg.amp else None
    channels_last = resolve_channels_last(cfg.channels_last, device)
    bs, steps = sizes["step_batch"], sizes["steps"]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8 * bs, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images)).astype(np.int64)
    out: dict[str, Any] = {"settings": {"amp_dtype": str(dtype).replace("torch.", "") if dtype else None,
                                        "channels_last": channels_last, "compile": cfg.compile,
                                        "batch_size": bs, "steps_per_repeat": steps,
                                        "repeats": sizes["repeats"]},
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
        times = {k: [] for k in variants}
        for _ in range(sizes["repeats"]):  # interleaved, so drifting machine load hits both alike
            for k, run in variants.items():
                times[k].append(_seconds(lambda: run(steps), device))
        for k in variants:
            out[k][name] = steps * bs / statistics.median(times[k])
        out["ratio"][name] = out["configured"][name] / out["plain"][name]
        del variants
    return out


def bench_inference(cfg, models, device, sizes) -> dict[str, float]:
    dtype = amp_dtype(device) if cfg.amp else None
    fmt = torch.channels_last if resolve_channels_last(cfg.channels_last, device) else torch.contiguous_format
    bs = sizes["infer_batch"]
    out = {}
    for name in models:
        model = build_model(name).to(device, memory_format=fmt).eval()
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


# ----------------------------------------------------------------------------------------------------
def run_bench(device_name_: str = "auto", quick: bool = False, models=None, kornia: bool = False,
              overrides: dict | None = None) -> dict[str, Any]:
    device = resolve_device(device_name_)
    sizes = QUICK if quick else (CUDA if device.type == "cuda" else FULL)
    models = list(models or (QUICK_MODELS if quick else list_models()))
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise UserError(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(list_models())}")
    cfg = make_config("paper", augment="full", mix_prob=0.5, device=device.type, **(overrides or {}))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    load_before = _load_average()
    t0 = time.perf_counter()
    data = bench_data(cfg, device, sizes, kornia=kornia, quick=quick)
    t1 = time.perf_counter()
    steps = bench_train_steps(cfg, models, device, sizes)
    t2 = time.perf_counter()
    inference = bench_inference(cfg, models, device, sizes)
    t3 = time.perf_counter()
    # the batched loader runs on the training stream, so its time adds to the step's
    data_s = 1 / data["batched_img_s"]
    share = {m: data_s / (data_s + 1 / steps["configured"][m]) for m in models}
    return {
        "device": device_name(device), "device_type": device.type, "quick": quick,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "augment": cfg.augment, "mix_prob": cfg.mix_prob,
        "data_pipeline": data,
        "train_step_img_s": steps["configured"], "train_step_plain_img_s": steps["plain"],
        "train_step_ratio": steps["ratio"], "train_step_settings": steps["settings"],
        "inference_img_s": inference,
        "data_loading_share": share,
        # measured side by side: the configured step on a fixed batch vs fed by the device loader
        "train_step_with_loader_img_s": steps["with_loader"],
        "data_share_measured": {m: max(0.0, 1 - steps["with_loader"][m] / steps["configured"][m]) for m in models},
        # a 50,000-image epoch at the step's batch size, data included, validation excluded
        "epoch_seconds_50k": {m: 50_000 / steps["with_loader"][m] for m in models},
        "per_sample_cores_to_feed": {m: steps["configured"][m] / data["per_sample_img_s"] for m in models},
        "peak_memory_mb": peak_memory_mb(device),
        "seconds": time.perf_counter() - t0,
        "load_average_before_after": [load_before, _load_average()],  # other processes skew CPU timings
        "phase_seconds": {"data": t1 - t0, "train_step": t2 - t1, "inference": t3 - t2},
    }


def format_table(result: dict[str, Any]) -> str:
    import pandas as pd

    d = result["data_pipeline"]
    lines = [f"device: {result['device']} (torch {result['versions']['torch']}){' [quick]' if result['quick'] else ''}",
             f"data pipeline, augment={result['augment']}, mix_prob={result['mix_prob']}, batch {d['batch_size']}: "
             f"per-sample {d['per_sample_img_s']:,.0f} img/s (0 workers, 1 thread: per core) | "
             f"batched {d['batched_img_s']:,.0f} img/s ({d['torch_threads']} threads) | ratio {d['ratio']:.1f}x"]
    if "ratio_per_core" in d:
        lines.append(f"per core (both on one thread): batched {d['batched_one_thread_img_s']:,.0f} img/s, "
                     f"ratio {d['ratio_per_core']:.1f}x")
    if "per_sample_transform_tensor_img_s" in d:
        tensor_rate, pil_rate = d["per_sample_transform_tensor_img_s"], d["per_sample_transform_pil_img_s"]
        lines.append(f"per-sample transform alone (no loader, one core): uint8 tensors {tensor_rate:,.0f} img/s, "
                     f"PIL {pil_rate:,.0f} img/s")
    if "kornia_img_s" in d:
        lines.append(f"kornia {d['kornia_version']}: {d['kornia_img_s']:,.0f} img/s vs BatchAugment "
                     f"{d['batch_augment_img_s']:,.0f} img/s (augmentation only, one batch repeated)")
    s = result["train_step_settings"]
    table = pd.DataFrame({
        "train img/s (configured)": result["train_step_img_s"],
        "train img/s (plain fp32 NCHW)": result["train_step_plain_img_s"],
        "ratio": result["train_step_ratio"],
        "inference img/s": result["inference_img_s"],
        "batched data share": result["data_loading_share"],
        "data share (measured)": result["data_share_measured"],
        "s per 50k epoch": result["epoch_seconds_50k"]})
    lines.append(f"train step: batch {s['batch_size']}, configured = amp {s['amp_dtype']}, channels_last "
                 f"{s['channels_last']}, compile {s['compile']}; median of {s['repeats']} repeats")
    lines.append(table.to_markdown(floatfmt=",.2f"))
    lines.append(f"peak memory: {result['peak_memory_mb']:,.0f} MiB; {result['seconds']:.1f} s; load average "
                 f"before/after {result['load_average_before_after']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m lib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes, two models: under a minute on 2 cores")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--models", nargs="+", help=f"subset of {', '.join(list_models())}")
    parser.add_argument("--kornia", action="store_true", help="also time kornia's augmentations (comparison)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="override the configured step's memory format (default: lib.train's choice)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="override mixed precision for the configured step")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the configured step's model")
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("channels_last", "amp", "compile") if getattr(args, k) is not None}
    result = run_bench(args.device, quick=args.quick, models=args.models, kornia=args.kornia, overrides=overrides)
    print(format_table(result))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
