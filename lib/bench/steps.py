"""The training step, a real solo epoch, inference and aten op counts per model."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..augment import make_train_loader, memory_format, resolve_channels_last
from ..common import amp_dtype
from ..config import make_config
from ..models import build_model
from ..recipe import compile_model, make_criterion, make_optimizer, make_scheduler, train_step
from ..train import train
from .timing import batches_forever, seconds


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

    batches = batches_forever(loader) if loader is not None else None

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
                times[k].append(seconds(lambda: run(n_steps[k]), device))
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
    from ..sources.synthetic import write_smoke_dataset

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
    fmt = memory_format(cfg.channels_last, device)
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
        out[name] = reps * bs / statistics.median(seconds(lambda: run(reps), device)
                                                  for _ in range(sizes["repeats"]))
    return out


def bench_ops(cfg, models, device) -> dict[str, Any]:
    """Aten ops per training step: each model's step and the device loader's share of a step (lib.bench.opcount), for
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
