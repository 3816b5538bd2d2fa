"""The report's augmentations and the training/evaluation loaders. What the augmentation does is one
``lib.policies.AugmentSpec``, read once from the run config; both pipelines read that spec:

- per-sample (``train_transform``, here): torchvision.transforms.v2 on one image (PIL or uint8 CHW tensor), run
  by a DataLoader ("torchvision" loader, what the report used);
- batched (``lib.batch_augment.BatchAugment``): the same operations on uint8 NCHW images on any device, with
  independent random parameters per image ("device" loader: thousands of images per call, batches sliced from
  them; the data never waits on the CPU).

``BatchMix`` (MixUp/CutMix with probability ``spec.mix_prob``, soft targets) serves both loaders.
All randomness comes from torch's global RNGs, so ``torch.manual_seed(s)`` before an epoch replays the epoch.

Pipeline order (both paths): crop(pad 4) -> flip -> colour jitter -> rotation -> RandAugment | AutoAugment
-> to float + normalise -> random erasing; then MixUp/CutMix per batch.
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .batch_augment import BatchAugment
from .config import RunConfig
from .policies import ERASING_RATIO, ERASING_SCALE, PADDING, AugmentSpec

NUM_CLASSES = 10


# ====================================================================================================
# Per-sample path: torchvision.transforms.v2
# ====================================================================================================
def train_transform(spec, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """uint8 CHW tensor or PIL image -> augmented, normalised float CHW tensor, as the report's DataLoader did it.

    The loader feeds PIL images: torchvision's PIL kernels ran this pipeline about 1.6x faster per core than its
    uint8-tensor kernels on 32x32 images (report/benchmarks.md)."""
    s = AugmentSpec.of(spec)
    steps: list[v2.Transform] = []
    if s.crop:
        steps.append(v2.RandomCrop(32, padding=PADDING))
    if s.flip:
        steps.append(v2.RandomHorizontalFlip())
    if s.jitter > 0:
        steps.append(v2.ColorJitter(brightness=s.jitter, contrast=s.jitter, saturation=s.jitter, hue=s.jitter / 4))
    if s.rotation > 0:
        steps.append(v2.RandomRotation(s.rotation))
    if s.policy == "randaugment":
        steps.append(v2.RandAugment(num_ops=s.num_ops, magnitude=s.magnitude))
    elif s.policy == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if s.erasing_prob > 0:  # value "random": per-pixel N(0, 1), as the notebooks
        steps.append(v2.RandomErasing(p=s.erasing_prob, scale=(ERASING_SCALE[0], s.erasing_max_area),
                                      ratio=ERASING_RATIO, value="random" if s.erasing_random else 0))
    return v2.Compose(steps)


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """uint8 CHW tensor or PIL image -> normalised float CHW tensor (no augmentation)."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


# ====================================================================================================
# MixUp / CutMix per batch (both loaders)
# ====================================================================================================
class BatchMix:
    """``(x float NCHW, y int64) -> (x, soft targets float (N, C))``: with probability ``spec.mix_prob`` the batch
    gets v2.MixUp or v2.CutMix (50/50, one lambda per batch, as torchvision), else one-hot targets.

    Works on device tensors without a host sync: the coin, the choice and lambda are drawn on the CPU RNG
    (torchvision draws them there) and only the mixing itself runs on the tensors' device.
    """

    def __init__(self, spec, num_classes: int = NUM_CLASSES):
        s = AugmentSpec.of(spec)
        self.mix_prob = s.mix_prob
        self.num_classes = num_classes
        self.mix = v2.RandomChoice([v2.MixUp(alpha=s.mixup_alpha, num_classes=num_classes),
                                    v2.CutMix(alpha=s.cutmix_alpha, num_classes=num_classes)])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix_prob > 0 and float(torch.rand(())) < self.mix_prob:
            return self.mix(x, y)
        return x, nnf.one_hot(y, self.num_classes).float()


# ====================================================================================================
# Loaders
# ====================================================================================================
def resolve_loader_kind(name: str, device: torch.device | str) -> str:
    """``auto`` -> "device" on CUDA (data resident on the GPU), "torchvision" on CPU."""
    if name == "auto":
        return "device" if torch.device(device).type == "cuda" else "torchvision"
    if name not in ("torchvision", "device"):
        raise ValueError(f"--loader {name!r}: expected auto, torchvision or device")
    return name


def resolve_channels_last(channels_last: bool | None, device: torch.device | str) -> bool:
    """cfg.channels_last=None -> on CUDA (tensor cores want NHWC), off on the CPU. NHWC was 2-17% faster on 2 CPU
    cores (report/benchmarks.md), but torch 2.14.1's oneDNN backward crashes the process (segfault, heap corruption)
    for some shapes in NHWC, e.g. light_resnet18 at base width 8 with batch 25 on 2 threads; NCHW never did.
    ``--channels-last`` still turns it on."""
    if channels_last is None:
        return torch.device(device).type == "cuda"
    return bool(channels_last)


def memory_format(channels_last: bool | None, device: torch.device | str) -> torch.memory_format:
    """``resolve_channels_last`` as the memory format to put tensors in."""
    return torch.channels_last if resolve_channels_last(channels_last, device) else torch.contiguous_format


def default_num_workers(device: torch.device | str) -> int:
    """Worker processes for the per-sample DataLoader: on CUDA up to 4 (the CPU only feeds the GPU); on CPU none,
    because the training step already uses every core through torch's intra-op threads."""
    return min(4, os.cpu_count() or 1) if torch.device(device).type == "cuda" else 0


def _check_arrays(x: np.ndarray, y: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("no images to load")


def _to_device_nchw(x: np.ndarray, device: torch.device) -> torch.Tensor:
    # HWC numpy -> NCHW view whose memory is NHWC, i.e. channels_last, without a copy on the host
    return torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2)


class ArrayDataset(Dataset):
    """Numpy HWC uint8 images + int labels -> (transform(PIL image), label); no transform: uint8 CHW tensor."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform=None):
        self.x, self.y, self.transform = x, np.asarray(y, dtype=np.int64), transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if self.transform is None:
            return torch.from_numpy(self.x[i]).permute(2, 0, 1), int(self.y[i])
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])  # PIL: the faster per-sample kernels


class _MixCollate:
    """Stack the samples, then MixUp/CutMix the batch (in the worker, like the report's custom collate)."""

    def __init__(self, mix: BatchMix):
        self.mix = mix

    def __call__(self, samples):
        return self.mix(*default_collate(samples))


class TorchvisionLoader:
    """Per-sample v2 transforms in a DataLoader (shuffle, drop_last), BatchMix in the collate, then to device."""

    def __init__(self, spec: AugmentSpec, x, y, mean, std, device, batch_size: int,
                 channels_last: bool | None = None, num_workers: int | None = None):
        self.device = torch.device(device)
        self.memory_format = memory_format(channels_last, self.device)
        workers = num_workers if num_workers is not None else default_num_workers(self.device)
        # non-persistent workers: every epoch's workers are seeded afresh from the global torch RNG
        self.loader = DataLoader(ArrayDataset(x, y, train_transform(spec, mean, std)),
                                 batch_size=min(batch_size, len(x)), shuffle=True, drop_last=True,
                                 num_workers=workers, pin_memory=self.device.type == "cuda",
                                 collate_fn=_MixCollate(BatchMix(spec)), persistent_workers=False)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, soft in self.loader:
            yield (xb.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                   soft.to(self.device, non_blocking=True))


def default_chunk_images(device: torch.device | str) -> int:
    """Images the device loader augments per ``BatchAugment`` call. On a GPU a call costs its ~600-1,000 kernel
    launches whatever the count, so 16,384 images (128 batches of 128) spread them to a few per training step;
    its temporaries peak near 80 KiB per image (1.3 GB), which a 16 GB T4 holds beside the model. On the CPU a
    chunk that stays in cache is fastest: 512 images were never slower than batches of 128, and chunks of a few
    thousand were (report/benchmarks.md)."""
    return 512 if torch.device(device).type == "cpu" else 16_384


class DeviceLoader:
    """The whole training set resident on the device as uint8 NCHW (channels_last); each epoch a randperm on the
    device; BatchAugment on a chunk of thousands of images at a time (each image its own random parameters, as
    batch by batch), batches sliced from the chunk, BatchMix per batch. No per-sample Python, no host syncs."""

    def __init__(self, spec: AugmentSpec, x, y, mean, std, device, batch_size: int,
                 channels_last: bool | None = None, chunk_images: int | None = None):
        self.device = torch.device(device)
        self.memory_format = memory_format(channels_last, self.device)
        self.x = _to_device_nchw(x, self.device)
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64), device=self.device)
        self.batch_size = min(batch_size, len(self.y))
        self.chunk_images = chunk_images or default_chunk_images(self.device)
        self.augment = BatchAugment(spec, mean, std)
        self.mix = BatchMix(spec)

    def __len__(self) -> int:
        return len(self.y) // self.batch_size  # drop_last

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y), device=self.device)
        return self.batches(order[:len(self) * self.batch_size], self.batch_size)

    def batches(self, order: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of ``batch_size`` images in ``order`` (indices on the device; whole batches), augmented a chunk
        of about ``chunk_images`` (whole batches) at a time; torchrun's ShardedLoader passes its rank's order."""
        per_chunk = max(1, self.chunk_images // batch_size) * batch_size
        for start in range(0, len(order), per_chunk):
            idx = order[start:start + per_chunk]
            # one layout change per chunk: slices along N of a channels_last chunk stay channels_last
            chunk = self.augment(self.x[idx]).contiguous(memory_format=self.memory_format)
            labels = self.y[idx]
            for b in range(0, len(idx), batch_size):
                xb, soft = self.mix(chunk[b:b + batch_size], labels[b:b + batch_size])
                yield xb.contiguous(memory_format=self.memory_format), soft
            del chunk, labels  # before the next chunk is made: one chunk in memory at a time


class EvalLoader:
    """Validation/test batches in order, normalised, ``(x float NCHW, y int64)`` on the device; data resident there."""

    def __init__(self, x, y, mean, std, device, batch_size: int = 256, channels_last: bool | None = None):
        self.device = torch.device(device)
        self.memory_format = memory_format(channels_last, self.device)
        self.x = _to_device_nchw(x, self.device)
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64), device=self.device)
        self.mean = torch.tensor([float(m) for m in mean], device=self.device).view(-1, 1, 1)
        self.std = torch.tensor([float(s) for s in std], device=self.device).view(-1, 1, 1)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.y), self.batch_size):
            xb = F.to_dtype(self.x[start:start + self.batch_size], torch.float32, scale=True)
            xb = xb.sub(self.mean).div_(self.std)  # F.normalize's arithmetic, constants already on the device
            yield xb.contiguous(memory_format=self.memory_format), self.y[start:start + self.batch_size]


def make_train_loader(cfg: RunConfig, x: np.ndarray, y: np.ndarray, mean, std, device, kind: str = "torchvision"):
    """Training batches ``(x float NCHW, soft targets (B, 10))`` on ``device``; len() = steps per epoch
    (drop_last; a set smaller than one batch gives one batch of all of it)."""
    _check_arrays(x, y)
    spec = AugmentSpec.of(cfg)
    if resolve_loader_kind(kind, device) == "device":
        return DeviceLoader(spec, x, y, mean, std, device, cfg.batch_size, cfg.channels_last)
    return TorchvisionLoader(spec, x, y, mean, std, device, cfg.batch_size, cfg.channels_last, cfg.num_workers)


def make_eval_loader(x: np.ndarray, y: np.ndarray, mean, std, device, batch_size: int = 256,
                     channels_last: bool | None = None) -> EvalLoader:
    """Evaluation batches ``(x float NCHW, y int64)`` on ``device``, in order, nothing dropped."""
    _check_arrays(x, y)
    return EvalLoader(x, y, mean, std, device, batch_size, channels_last)
