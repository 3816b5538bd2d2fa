"""The recipe's pieces, as the original notebooks ran them: SGD-Nesterov, the cosine schedule (the lr of
CosineAnnealingLR(T_max=epochs) stepped per epoch; optionally a linear warm-up), cross-entropy with label smoothing
on MixUp/CutMix soft targets, one training step and evaluation. lib.train runs them in its loop; lib.bench times
exactly these.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn
from packaging.version import Version

from .common import UserError
from .config import RunConfig
from .models import DropBranch


def make_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD-Nesterov, with the implementation ``sgd_implementation`` picks for the parameters' device."""
    params = list(model.parameters())
    fused = sgd_implementation(params[0].device, cfg.compile) == "fused"
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay, **({"fused": True} if fused else {"foreach": True}))
    if fused and cfg.momentum > 0:
        # Fused SGD's first step fills its new momentum buffers (torch.empty_like) only if it runs: a step
        # GradScaler skips (inf in fp16, common at the start) would leave them uninitialised. Zeros first give
        # the same first step (0.9 * 0 + g = g) and leave a skipped one harmless.
        for p in params:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return optimizer


def sgd_implementation(device: torch.device, compile: bool = False, torch_version: str | None = None) -> str:
    """"fused" on CUDA: one launch for every parameter, and under fp16 it reads GradScaler's scale and inf flag on
    the device (foreach SGD makes GradScaler.step wait for the host each step); "foreach" elsewhere, and on CUDA
    with --compile before torch 2.5: until PyTorch PR #134546 fused optimizers compared strides on size-1
    dimensions too, and a compiled 1x1 convolution's gradient can come out contiguous while its channels_last
    weight is not (the same failure for fused Adam: PyTorch issue #126585)."""
    if torch.device(device).type != "cuda":
        return "foreach"
    release = Version(torch_version or torch.__version__).release
    return "foreach" if compile and release[:2] < (2, 5) else "fused"


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, the optimizer staying as this device built it, whatever device wrote
    ``state``: the saved param groups bring back their own fused / foreach flags (a foreach run resumed with fused
    SGD and fp16 then crashes in GradScaler.step, which still passes the fused optimizer its scale), and the saved
    momentum buffers keep the memory format they were saved in (NCHW against channels_last parameters)."""
    built = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, built):
        group.update(flags)
        for p in group["params"]:
            buf = optimizer.state[p].get("momentum_buffer") if p in optimizer.state else None
            if buf is not None and buf.stride() != p.stride():
                optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)  # p's strides
            elif buf is None and flags.get("fused") and group["momentum"] > 0:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)  # as make_optimizer: see there


def compile_model(model: nn.Module, cuda_graphs: bool = False) -> nn.Module:
    """torch.compile for the training step: the forward graph and, through AOTAutograd, its backward, both by
    inductor. Static shapes (every training batch has the same size: drop_last). ``cuda_graphs``: inductor's
    "reduce-overhead" mode replays each step as CUDA graphs (CUDA only)."""
    compiled = torch.compile(model, dynamic=False, mode="reduce-overhead" if cuda_graphs else None)
    return _CudaGraphSteps(compiled) if cuda_graphs else compiled


class _CudaGraphSteps(nn.Module):
    """Marks each call as a new step (torch.compiler.cudagraph_mark_step_begin): the graphs may then reuse the
    previous step's output memory, which the training loop has finished reading by then."""

    def __init__(self, compiled: nn.Module):
        super().__init__()
        self.compiled = compiled

    def forward(self, x):
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x)


def lr_factor(cfg: RunConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Iteration -> multiple of ``cfg.lr``: linear warm-up over W, then cosine annealing to 0 over the rest.

    lr_step="epoch" (the notebooks'): the factor changes once per epoch, so epoch e (from 1) runs at
    0.5 (1 + cos(pi (e - 1) / epochs)) x lr, the lr of CosineAnnealingLR(T_max=epochs) stepped once per epoch;
    W whole epochs (rounded), the k-th at k / W. lr_step="iteration": the same curve per iteration, W iterations
    from lr / W up. W is ``cfg.warmup_epochs_used()`` (none in the notebooks), at most a tenth of the run."""
    per_epoch = cfg.lr_step == "epoch"
    unit = steps_per_epoch if per_epoch else 1  # steps per unit of the schedule
    total = cfg.epochs * steps_per_epoch // unit
    warmup = min(int(round(cfg.warmup_epochs_used() * steps_per_epoch / unit)), total - 1)

    def factor(step: int) -> float:
        t = step // unit
        if t < warmup:
            return (t + 1) / warmup if per_epoch else (1 + t * (warmup - 1) / warmup) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(t - warmup, total - warmup) / (total - warmup)))
    return factor


def make_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The schedule of ``lr_factor``, stepped once per iteration (train_step); its state is just the step count."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))


def make_criterion(cfg: RunConfig) -> nn.Module:
    # Soft (MixUp/CutMix) targets are class probabilities; CrossEntropyLoss smooths those too.
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def train_step(model, x, soft_y, optimizer, scheduler, criterion, scaler=None, dtype=None, coins=None):
    """One optimisation step. Returns (loss, correct, correct_dominant) as 0-dim device tensors, no host sync:
    ``correct`` sums each image's target share of its predicted class, i.e. lam [pred == y_a] + (1 - lam)
    [pred == y_b] for a mixed pair (the notebooks' "Approx Train Acc"); ``correct_dominant`` counts
    predictions of the larger share's label. ``coins`` (StochasticDepthCoins): the step's
    stochastic-depth coins, drawn for the scheduler's step count (the global step, kept across --resume)."""
    if coins is not None:
        coins.draw(scheduler.last_epoch)
    with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(x)
        loss = criterion(logits, soft_y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:  # fp16 only; bf16 needs no loss scaling
        scaler.scale(loss).backward()
        if coins is not None:
            coins.drop_gradients()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if coins is not None:
            coins.drop_gradients()
        optimizer.step()
    scheduler.step()
    pred = logits.detach().argmax(1, keepdim=True)
    correct = soft_y.gather(1, pred).sum()  # soft_y = lam onehot(y_a) + (1 - lam) onehot(y_b), unsmoothed
    correct_dominant = (pred.squeeze(1) == soft_y.argmax(1)).sum()
    return loss.detach(), correct, correct_dominant


@torch.inference_mode()
def evaluate(model, loader, dtype=None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a loader of (x, integer labels); single pass, no TTA."""
    model.eval()
    loss_sum = correct = seen = None
    for x, y in loader:
        with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        batch_loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        batch_correct = (logits.argmax(1) == y).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        seen = len(y) if seen is None else seen + len(y)
    if not seen:
        raise UserError("the validation set is empty")
    return loss_sum.item() / seen, correct.item() / seen


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch reseeds every RNG from (seed, epoch): a resumed run draws exactly what a straight one did."""
    return seed * 100_003 + epoch


class StochasticDepthCoins:
    """Every DropBranch's coin for one training step, drawn on the host and the same on every process.

    The coins of global step t come from a ``torch.Generator`` seeded with (seed, t): every torchrun rank drops
    the same blocks (one network trained, as in one process), a resumed run draws what a straight one did, and
    the draw needs nothing from the device. ``draw(t)`` fills each block's ``keep`` (a fill kernel, no copy from
    the host and no sync); after backward, ``drop_gradients()`` sets the gradients of a dropped branch's own
    parameters to None, as in the notebooks, where a dropped block returns its shortcut alone: SGD then applies
    neither momentum nor weight decay to them that step. (Their gradients are exact zeros here, since the branch
    is still computed and multiplied by 0; its BatchNorm statistics update, as in the notebooks.)
    """

    def __init__(self, model: nn.Module, seed: int):
        self.seed = seed
        self.blocks = [(m.drop_path, m.branch_parameters()) for m in model.modules()
                       if isinstance(getattr(m, "drop_path", None), DropBranch) and m.drop_path.p > 0]
        self.p = torch.tensor([drop.p for drop, _ in self.blocks], dtype=torch.float64)
        self.dropped: list[nn.Parameter] = []
        for drop, _ in self.blocks:
            drop.host_coins = True

    def __len__(self) -> int:
        return len(self.blocks)

    def keep(self, step: int) -> list[bool]:
        """Whether each block keeps its branch at global step ``step`` (from 0)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_033 + step)
        return (torch.rand(len(self.blocks), generator=g, dtype=torch.float64) >= self.p).tolist()

    def draw(self, step: int) -> None:
        self.dropped = []
        for (drop, params), kept in zip(self.blocks, self.keep(step)):
            drop.keep.fill_(1.0 if kept else 0.0)
            if not kept:
                self.dropped += params

    def drop_gradients(self) -> None:
        for p in self.dropped:
            p.grad = None


def stochastic_depth_coins(model: nn.Module, seed: int) -> StochasticDepthCoins | None:
    """Host coins for ``model``'s whole-batch stochastic depth (None: it has none)."""
    coins = StochasticDepthCoins(model, seed)
    return coins if len(coins) else None
