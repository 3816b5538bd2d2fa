"""Timing helpers and sizes shared by the benchmarks: device syncs, interleaved rounds, load average."""
from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager
from typing import Any, Callable

import torch


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
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


def load_average() -> float | None:
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
def one_thread():
    """As in a DataLoader worker process, which runs torch with one intra-op thread: images/s per core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def interleaved(fns: dict[str, Callable[[], int]], rounds: int, device: torch.device) -> dict[str, float]:
    """Images/s of each function (it returns how many images it did), taking turns for ``rounds`` rounds so that
    drifting machine load hits all of them alike; total images / total seconds."""
    for fn in fns.values():
        fn()  # warm-up: allocations, tables, DataLoader start
    images, seconds = dict.fromkeys(fns, 0), dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            images[name] += fn()
            sync(device)
            seconds[name] += time.perf_counter() - t0
    return {name: images[name] / seconds[name] for name in fns}


def batches_forever(loader):
    """Batches from a loader forever, epoch after epoch."""
    while True:
        yield from loader
