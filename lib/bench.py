"""How fast the data pipeline, the training step and inference run on this machine; ratios measured side by side.

    python -m lib.bench                          # CPU or CUDA, whatever is here; all models
    python -m lib.bench --device cpu --quick     # under a minute on 2 CPU cores
    python -m lib.bench --device cuda --json report/bench_cuda.json

Measures, with the report's full augmentation set (augment=full, MixUp/CutMix probability 0.5):
- data pipeline: the per-sample torchvision loader in this one process (0 workers: images/s per core) and the
  batched device loader, same data, same run;
- training step per model: the step lib.train runs on this device (its amp / channels_last / compile settings)
  and a plain eager fp32 NCHW step, interleaved, median of repeats;
- inference per model (eval mode, the configured precision and memory format); peak memory; and, from these,
  the share of step time the batched loader would take.
Data are random uint8 images (speed does not depend on content). Numbers in report/benchmarks.md.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .augment import BatchAugment, make_train_loader, resolve_channels_last
from .common import ArgumentParser, amp_dtype, atomic_write_text, resolve_device, run_cli
from .config import make_config
from .models import build_model, list_models
from .train import make_criterion, make_optimizer, make_scheduler, train_step

# Sizes per mode: (per-sample batches, batched batches, step batch, timed steps, repeats, inference batch)
FULL = {"batch": 128, "per_sample_batches": 4, "batched_batches": 20, "step_batch": 64, "steps": 2,
        "repeats": 5, "infer_batch": 256}
QUICK = {"batch": 128, "per_sample_batches": 1, "batched_batches": 4, "step_batch": 8, "steps": 1,
         "repeats": 2, "infer_batch": 32}
CUDA = {"batch": 128, "per_sample_batches": 4, "batched_batches": 50, "step_batch": 128, "steps": 20,
        "repeats": 5, "infer_batch": 512}
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


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB (process peak RSS)
    except ImportError:  # Windows
        return float("nan")


# ----------------------------------------------------------------------------------------------------
def bench_data(cfg, device, sizes, kornia: bool = False) -> dict[str, Any]:
    """Images/s of the per-sample loader (this process, no workers) and the batched device loader."""
    bs = sizes["batch"]
    n = bs * (max(sizes["per_sample_batches"], sizes["batched_batches"]) + 1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int64)
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    result: dict[str, Any] = {"batch_size": bs, "per_sample_workers": 0, "cpu_cores": os.cpu_count(),
                              "torch_threads": torch.get_num_threads()}

    def images_per_s(loader, batches: int) -> float:
        it = iter(loader)
        next(it)  # warm-up: first batch (allocations, tables built, DataLoader start)
        seconds = _seconds(lambda: [next(it) for _ in range(batches)], device)
        return batches * bs / seconds

    per_sample = make_train_loader(cfg.__class__(**{**cfg.to_dict(), "num_workers": 0}), x, y, mean, std,
                                   device, "torchvision")
    result["per_sample_img_s"] = images_per_s(per_sample, sizes["per_sample_batches"])
    result["batched_img_s"] = images_per_s(make_train_loader(cfg, x, y, mean, std, device, "device"),
                                           sizes["batched_batches"])
    result["ratio"] = result["batched_img_s"] / result["per_sample_img_s"]
    if kornia:
        result.update(bench_kornia(cfg, x[:bs], mean, std, device, sizes["batched_batches"]))
    return result


def bench_kornia(cfg, x, mean, std, device, batches: int) -> dict[str, Any]:
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
    aug(xb.float() / 255), ours(xb)  # warm-up
    t_kornia = _seconds(lambda: [aug(xb.float() / 255) for _ in range(batches)], device)
    t_ours = _seconds(lambda: [ours(xb) for _ in range(batches)], device)
    return {"kornia_version": kornia.__version__, "kornia_img_s": batches * len(xb) / t_kornia,
            "batch_augment_img_s": batches * len(xb) / t_ours}


# ----------------------------------------------------------------------------------------------------
def _step_setup(cfg, name, device, *, dtype, channels_last, compile_, batch):
    model = build_model(name).to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, steps_per_epoch=1000)
    criterion = make_criterion(cfg)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    step_model = torch.compile(model) if compile_ else model
    step_model.train()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    soft = torch.softmax(torch.randn(batch, 10, generator=g), 1).to(device)

    def run(steps: int) -> None:
        for _ in range(steps):
            loss, _ = train_step(step_model, x, soft, optimizer, scheduler, criterion, scaler, dtype)
        loss.item()  # one sync at the end, as the training loop's periodic check

    return run


def bench_train_steps(cfg, models, device, sizes) -> dict[str, Any]:
    """Configured step (lib.train's settings for this device) vs plain eager fp32 NCHW, interleaved."""
    dtype = amp_dtype(device) if cfg.amp else None
    channels_last = resolve_channels_last(cfg.channels_last, device)
    bs, steps = sizes["step_batch"], sizes["steps"]
    out: dict[str, Any] = {"settings": {"amp_dtype": str(dtype).replace("torch.", "") if dtype else None,
                                        "channels_last": channels_last, "compile": cfg.compile,
                                        "batch_size": bs, "steps_per_repeat": steps,
                                        "repeats": sizes["repeats"]},
                           "configured": {}, "plain": {}, "ratio": {}}
    for name in models:
        variants = {"configured": _step_setup(cfg, name, device, dtype=dtype, channels_last=channels_last,
                                              compile_=cfg.compile, batch=bs),
                    "plain": _step_setup(cfg, name, device, dtype=None, channels_last=False, compile_=False,
                                         batch=bs)}
        for run in variants.values():
            run(2 if cfg.compile or device.type == "cuda" else 1)  # warm-up (and compilation)
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
        raise ValueError(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(list_models())}")
    cfg = make_config("paper", augment="full", mix_prob=0.5, device=device.type, **(overrides or {}))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    t0 = time.perf_counter()
    data = bench_data(cfg, device, sizes, kornia=kornia)
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
        "per_sample_cores_to_feed": {m: steps["configured"][m] / data["per_sample_img_s"] for m in models},
        "peak_memory_mb": peak_memory_mb(device),
        "seconds": time.perf_counter() - t0,
        "phase_seconds": {"data": t1 - t0, "train_step": t2 - t1, "inference": t3 - t2},
    }


def format_table(result: dict[str, Any]) -> str:
    import pandas as pd

    d = result["data_pipeline"]
    lines = [f"device: {result['device']} (torch {result['versions']['torch']}){' [quick]' if result['quick'] else ''}",
             f"data pipeline, augment={result['augment']}, mix_prob={result['mix_prob']}, batch {d['batch_size']}: "
             f"per-sample {d['per_sample_img_s']:,.0f} img/s (1 process, 0 workers) | "
             f"batched {d['batched_img_s']:,.0f} img/s | ratio {d['ratio']:.1f}x"]
    if "kornia_img_s" in d:
        lines.append(f"kornia {d['kornia_version']}: {d['kornia_img_s']:,.0f} img/s vs BatchAugment "
                     f"{d['batch_augment_img_s']:,.0f} img/s (augmentation only, one batch repeated)")
    s = result["train_step_settings"]
    table = pd.DataFrame({
        "train img/s (configured)": result["train_step_img_s"],
        "train img/s (plain fp32 NCHW)": result["train_step_plain_img_s"],
        "ratio": result["train_step_ratio"],
        "inference img/s": result["inference_img_s"],
        "batched data share": result["data_loading_share"]})
    lines.append(f"train step: batch {s['batch_size']}, configured = amp {s['amp_dtype']}, channels_last "
                 f"{s['channels_last']}, compile {s['compile']}; median of {s['repeats']} repeats")
    lines.append(table.to_markdown(floatfmt=",.2f"))
    lines.append(f"peak memory: {result['peak_memory_mb']:,.0f} MiB; {result['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m lib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes, two models: under a minute on 2 cores")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--models", nargs="+", help=f"subset of {', '.join(list_models())}")
    parser.add_argument("--kornia", action="store_true", help="also time kornia's augmentations (comparison)")
    parser.add_argument("--channels-last", action=__import__("argparse").BooleanOptionalAction, default=None,
                        help="override the configured step's memory format (default: lib.train's choice)")
    parser.add_argument("--amp", action=__import__("argparse").BooleanOptionalAction, default=None,
                        help="override mixed precision for the configured step")
    parser.add_argument("--compile", action=__import__("argparse").BooleanOptionalAction, default=None,
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
