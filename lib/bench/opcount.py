"""How many aten ops a training step and the device loader dispatch: on a GPU each one is a launch (views and
host-side scalars aside) that costs the CPU microseconds, so a pipeline of many small ops starves a fast card.

Counted with a TorchDispatchMode (every op that reaches the dispatcher). Without a GPU the loader runs on PyTorch's
meta device, which dispatches the ops the CUDA path does (the masked selection, the GPU chunk size) without
computing anything; the step then runs on the CPU with the configured precision. ``python -m lib.bench --ops``
prints the counts; report/benchmarks.md has them.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..augment import make_train_loader, memory_format
from ..config import RunConfig
from ..models import build_model
from ..recipe import make_criterion, make_optimizer, make_scheduler, train_step


class AtenOpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it: ``total``, ``by_device`` (of their tensors: "cpu" for the host-side
    scalars of a device pipeline) and ``views`` (no kernel behind them)."""

    def __init__(self):
        super().__init__()
        self.total, self.views = 0, 0
        self.by_device: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices = {t.device.type for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
        self.total += 1
        self.views += bool(getattr(func, "is_view", False))
        self.by_device[next(iter(devices - {"cpu"}), "cpu")] += 1
        return out


def step_ops(cfg: RunConfig, name: str, device: torch.device, dtype, batch: int) -> int:
    """Aten ops of one ``lib.train.train_step`` of model ``name`` (its optimizer, scheduler and loss), counted on
    the step after a first one (which creates the optimizer's state). The count does not depend on ``batch``."""
    fmt = memory_format(cfg.channels_last, device)
    model = build_model(name, **cfg.model_overrides()).to(device, memory_format=fmt).train()
    optimizer = make_optimizer(cfg, model)
    scheduler, criterion = make_scheduler(cfg, optimizer, 10), make_criterion(cfg)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    soft = torch.softmax(torch.randn(batch, 10, device=device), 1)
    train_step(model, x, soft, optimizer, scheduler, criterion, scaler, dtype)
    with AtenOpCounter() as counter:
        train_step(model, x, soft, optimizer, scheduler, criterion, scaler, dtype)
    return counter.total


def loader_ops(cfg: RunConfig, device: torch.device, steps: int, chunk_images: int | None = None) -> dict:
    """Aten ops per step of the device loader over ``steps`` batches of ``cfg.batch_size``: the chunks' BatchAugment
    calls shared out over their steps, plus each step's slicing and BatchMix. ``chunk_images``: the loader's own
    (None) or another (one batch: the loader as it was before chunks)."""
    n = steps * cfg.batch_size
    loader = make_train_loader(cfg, np.zeros((n, 32, 32, 3), np.uint8), np.zeros(n, np.int64), [0.5] * 3,
                               [0.25] * 3, device, "device")
    if chunk_images is not None:
        loader.chunk_images = chunk_images
    with AtenOpCounter() as counter:
        done = sum(1 for _ in loader)
    return {"per_step": counter.total / done, "device_per_step": (counter.total - counter.by_device["cpu"]) / done,
            "host_per_step": counter.by_device["cpu"] / done, "chunk_images": loader.chunk_images, "steps": done}
