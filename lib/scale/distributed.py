"""One run, data-parallel over the processes ``torchrun`` starts (DistributedDataParallel).

    torchrun --nproc_per_node 4 -m lib.train --model robust_resnet64 --data-dir data --out runs/r64 [--sync-bn]

torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) sets up the process group: NCCL with one
GPU per process, gloo on the CPU. The configured ``--batch-size`` stays the *global* batch, so the recipe (and its
learning rate) is the report's at any N: every step, the global batch is drawn as in one process and each rank
takes its 1/N slice, augments and mixes it itself, and DDP averages the gradients. Rank 0 alone writes the run
folder; the others only train. Every rank takes the same decision to stop (``Context.max_over_ranks``): the
time limit from the slowest rank's clock, a non-finite loss or a SIGTERM/Ctrl-C on any rank at the next loss check
(every 50 steps and at each epoch's end), so all ranks stop after the same step and none is left waiting in a
collective. ``--sync-bn`` uses ``SyncBatchNorm2d`` (no host sync per layer) on any device. Without torchrun (no
WORLD_SIZE in the environment) nothing here is used and ``lib.train`` runs exactly as in one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from ..augment import DeviceLoader, TorchvisionLoader
from ..common import UserError

RANK_SEED_STRIDE = 1_000_003  # rank r augments with seed + r * stride: its own random draws, rank 0 as one process


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_main_process() -> bool:
    """Rank 0 of torchrun's processes, or a process started without it: the one that reports."""
    return int(os.environ.get("RANK", "0")) == 0


def launch_command() -> str:
    """The command that started this run, less its arguments (for the line that says how to continue it)."""
    if not launched_by_torchrun():
        return "python -m lib.train"
    world, per_node = os.environ["WORLD_SIZE"], os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
    if world == per_node:
        return f"torchrun --nproc_per_node {per_node} -m lib.train"
    return f"torchrun --nnodes {int(world) // int(per_node)} --nproc_per_node {per_node} (and this job's " \
           f"rendezvous options) -m lib.train"


@dataclass
class Context:
    """Where this process stands: rank 0 of 1 outside torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # inside a process group (torchrun)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per process: cuda:LOCAL_RANK (torchrun numbers the processes of a node from 0)."""
        if self.active and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def seed_offset(self) -> int:
        return self.rank * RANK_SEED_STRIDE

    def wrap(self, model: nn.Module, sync_bn: bool, device: torch.device) -> nn.Module:
        """The module the training step calls: DDP over ``model`` (whose state_dict checkpoints keep as before)."""
        if not self.active:
            return model
        if sync_bn:  # SyncBatchNorm2d, not nn.SyncBatchNorm: no host sync per layer on CUDA (its docstring)
            for module in model.modules():
                if type(module) is nn.BatchNorm2d:
                    module.__class__ = SyncBatchNorm2d  # forward only differs: parameters and buffers stay
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, loader, global_batch: int, seed: int):
        """This rank's share of each global batch; ``len()`` stays the steps per epoch of one process."""
        if not self.active:
            return loader
        return ShardedLoader(loader, global_batch, seed, self.rank, self.world_size)

    def average(self, *values: float) -> tuple[float, ...]:
        """Each value's mean over the ranks (their shares of the epoch are equal, so this is the global mean)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64,
                         device=torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return tuple((t / self.world_size).tolist())

    def max_over_ranks(self, *values: float) -> tuple[float, ...]:
        """Each value's maximum over the ranks: a decision every rank then takes alike (stop or go on)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64,
                         device=torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return tuple(t.tolist())

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def setup(device_name: str, sync_bn: bool = False) -> Context:
    """Join torchrun's process group (NCCL for CUDA, gloo otherwise); outside torchrun a one-process Context."""
    if not launched_by_torchrun():
        if sync_bn:
            raise UserError("--sync-bn: needs several processes; start them with torchrun --nproc_per_node N -m "
                            "lib.train ...")
        return Context()
    ctx = Context(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                  local_rank=int(os.environ.get("LOCAL_RANK", 0)), active=True)
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return ctx


class ShardedLoader:
    """Every step the global batch of a one-process run, drawn from one seeded permutation that every rank
    computes alike (as DistributedSampler); rank r keeps slice r of N, which it augments and mixes itself."""

    def __init__(self, loader, global_batch: int, seed: int, rank: int, world_size: int):
        self.loader, self.rank, self.world_size, self.seed = loader, rank, world_size, seed
        self.global_batch = min(global_batch, _num_samples(loader))
        if self.global_batch % world_size:
            raise UserError(f"--batch-size {global_batch}: the global batch must divide evenly over the "
                            f"{world_size} processes")
        self.local = self.global_batch // world_size
        self.epoch = 0
        if isinstance(loader, TorchvisionLoader):  # same dataset, transforms and MixUp/CutMix collate
            dl = loader.loader
            loader.loader = DataLoader(dl.dataset, batch_sampler=_RankBatches(self), num_workers=dl.num_workers,
                                       pin_memory=dl.pin_memory, collate_fn=dl.collate_fn)

    def set_epoch(self, epoch: int) -> None:
        """As DistributedSampler.set_epoch: a new permutation each epoch, the same on every rank."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(_num_samples(self.loader), generator=g)

    def rank_order(self) -> torch.Tensor:
        """This rank's indices for the whole epoch: slice ``rank`` of every global batch, one after another."""
        steps = len(self)
        return self.order()[:steps * self.global_batch].view(steps, self.world_size, self.local)[:, self.rank].flatten()

    def local_indices(self) -> Iterator[torch.Tensor]:
        """This rank's batches of the epoch, one index tensor each."""
        return iter(self.rank_order().split(self.local))

    def __len__(self) -> int:
        return _num_samples(self.loader) // self.global_batch  # drop_last, as the one-process loaders

    def __iter__(self):
        if isinstance(self.loader, DeviceLoader):
            # the epoch's order goes to the device in one copy (pinned, so it need not wait for the GPU), and the
            # rank's batches are sliced there, augmented a chunk at a time as in one process
            order = self.rank_order()
            if self.loader.device.type == "cuda":
                order = order.pin_memory()
            yield from self.loader.batches(order.to(self.loader.device, non_blocking=True), self.local)
        else:
            yield from self.loader


class _RankBatches(BatchSampler):
    def __init__(self, shard: ShardedLoader):
        super().__init__(SequentialSampler(range(0)), batch_size=1, drop_last=True)  # only iter/len are used
        self.shard = shard

    def __iter__(self):
        for idx in self.shard.local_indices():
            yield idx.tolist()

    def __len__(self) -> int:
        return len(self.shard)


def _num_samples(loader) -> int:
    if isinstance(loader, DeviceLoader):
        return len(loader.y)
    return len(loader.loader.dataset)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, with the gradient summed back the same way (torch.distributed.nn's all_reduce, which
    torch now deprecates in favour of a private module)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the global batch of all processes, on any device, without a host sync (nn.SyncBatchNorm
    reads a count through a boolean mask in every layer: a host sync each, and a graph break under
    torch.compile). In training each rank's per-channel count, mean and sum of squared deviations (``stats_dtype``,
    also under autocast) travel in one all-reduce, as its own row of a zero matrix (an all-gather that every
    backend has), with autograd, so the backward pass sees the global statistics too. Chan et al.'s pairwise
    formula combines them (no E[x^2] - E[x]^2 cancellation). The batch is normalised with the global mean and
    biased variance; the running statistics get the unbiased one, as BatchNorm2d. Evaluation is BatchNorm2d's."""

    # None: float64 on the CPU (as BatchNorm2d's CPU kernels accumulate), float32 on GPUs (as theirs; float64 is
    # slow there); each rank's mean is rounded to it before the ranks combine
    stats_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        c, world, rank = x.shape[1], dist.get_world_size(), dist.get_rank()
        xs = x.to(self.stats_dtype or (torch.float64 if x.device.type == "cpu" else torch.float32))
        var_local, mean_local = torch.var_mean(xs, dim=(0, 2, 3), correction=0)
        n_local = x.numel() // c
        local = torch.cat([mean_local, var_local * n_local, mean_local.new_full((1,), n_local)])
        rows = _AllReduceSum.apply(nn.functional.pad(local[None], (0, 0, rank, world - rank - 1)))
        means, sq_dev, counts = rows[:, :c], rows[:, c:2 * c], rows[:, 2 * c:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (sq_dev + counts * (means - mean) ** 2).sum(0) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))
        shape = (1, c, 1, 1)
        scale = torch.rsqrt(var + self.eps)
        if not self.affine:
            return ((xs - mean.view(shape)) * scale.view(shape)).to(x.dtype)
        return ((xs - mean.view(shape)) * (scale * self.weight).view(shape) + self.bias.view(shape)).to(x.dtype)
