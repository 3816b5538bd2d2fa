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
- aten ops per training step of the model and of the device loader (``lib.bench.opcount``; --ops);
- inference per model (eval mode, the configured precision and memory format); peak memory.
Data are random uint8 images unless --data-dir is given (speed does not depend on content). Numbers in
report/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..common import ArgumentParser, UserError, atomic_write_text, resolve_device
from ..config import make_config
from ..models import list_models
from .data import bench_chunks, bench_data
from .steps import bench_epoch, bench_inference, bench_ops, bench_train_steps
from .timing import CUDA, FULL, QUICK, QUICK_MODELS, TINY, TINY_MODEL, device_name, load_average, peak_memory_mb


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
        from ..data import find_cifar_dir
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
        "load_average_before_after": [load_average(), None]}  # other processes skew CPU timings

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
    result["load_average_before_after"][1] = load_average()
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

