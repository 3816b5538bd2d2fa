"""The data pipeline's speed: the per-sample torchvision loader against the batched device loader."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import numpy as np
import torch

from ..augment import default_chunk_images, make_train_loader
from ..batch_augment import BatchAugment
from ..config import make_config
from .timing import batches_forever, interleaved, one_thread


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
    per_sample = batches_forever(make_train_loader(dataclasses.replace(cfg, num_workers=0), x[:4 * bs], y[:4 * bs],
                                                   mean, std, device, "torchvision"))
    chunked = make_train_loader(cfg, x, y, mean, std, device, "device")
    one_batch = make_train_loader(cfg, x, y, mean, std, device, "device")
    one_batch.chunk_images = bs  # one BatchAugment call per batch: the loader before chunks

    def epoch(loader):
        for _ in loader:
            pass
        return len(loader) * bs

    def one_core(fn, *args):
        with one_thread():
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
    rates = interleaved(fns, rounds, device)
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

        with one_thread() if device.type == "cpu" else contextlib.nullcontext():
            out[label] = interleaved({k: (lambda l=l: epoch(l)) for k, l in loaders.items()}, rounds, device)
    return out


def bench_transform_only(cfg, x, mean, std, rounds: int) -> dict[str, float]:
    """The per-sample transform alone (no DataLoader, collate or mixing), one core: on PIL images, as our loader
    and the report's pipeline feed it, and on uint8 tensors (why the loader feeds PIL)."""
    from PIL import Image
    from torchvision.transforms import v2

    from ..augment import train_transform

    steps = list(train_transform(cfg, mean, std).transforms)
    tensor_t = v2.Compose([t for t in steps if not isinstance(t, v2.ToImage)])  # the tensor kernels, unwrapped
    pil_t = v2.Compose(steps)
    tensors = [torch.from_numpy(a).permute(2, 0, 1) for a in x]
    pils = [Image.fromarray(a) for a in x]
    with one_thread():
        rates = interleaved({"tensor": lambda: len([tensor_t(i) for i in tensors]),
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
    rates = interleaved({"kornia": lambda: len(aug(xb.float() / 255)), "ours": lambda: len(ours(xb))},
                         rounds, device)
    return {"kornia_version": kornia.__version__, "kornia_img_s": rates["kornia"],
            "batch_augment_img_s": rates["ours"]}
