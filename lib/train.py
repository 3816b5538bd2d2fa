"""The report's training recipe, as the original notebooks ran it: SGD-Nesterov, cosine annealing (the lr of
CosineAnnealingLR(T_max=epochs) stepped per epoch; optionally a linear warm-up), cross-entropy with label smoothing
on MixUp/CutMix soft targets, per-epoch history and atomic checkpoints.

    python -m lib.train --model robust_resnet64 --data-dir data --out runs/robust64
    python -m lib.train --profile smoke --model light_resnet18 --out runs/smoke   # tiny, CPU, synthetic data
    python -m lib.train ... --resume                                              # continue from RUN_DIR/last.pt
    python -m lib.train ... --stop-after-epochs 3    # epochs 1-3 of the 300-epoch schedule; --resume goes on
    python -m lib.train ... --time-limit 50          # as many epochs as fit in 50 minutes; --resume goes on

RUN_DIR receives config.json (every setting, versions, device, git commit), history.csv (one row per epoch),
last.pt (every epoch) and best.pt (each new best validation accuracy). One process at a time writes a run
folder (a second one exits with code 2); SIGTERM, like Ctrl-C, abandons the epoch in progress (exit code 143).
A file of the run folder that cannot be written (a full disk, no permission) ends the run with one line and exit
code 74; the folder keeps the epochs before, complete.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import platform
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from packaging.version import Version
from tqdm.auto import tqdm

from . import __version__, distributed
from .augment import make_eval_loader, make_train_loader, resolve_channels_last, resolve_loader_kind
from .checkpoint import CHECKPOINT_FORMAT, WriteFailedError, read_checkpoint, write_or_explain
from .common import (ArgumentParser, UserError, amp_dtype, atomic_path, atomic_torch_save, resolve_device, run_cli,
                     seed_everything)
from .config import MODEL_FIELDS, RunConfig, add_config_arguments, make_config, save_config
from .data import channel_stats, load_splits
from .models import build_model, count_parameters, resolve_config, stochastic_depth_coins
from .runlock import (Terminated, hold_run_dir, interrupts_handled, pending_signal, raise_for,
                      signals_deferred)
from .smoke_data import ensure_smoke_data

# train_acc: the notebooks' "Approx Train Acc" (Figure 1's training curve): lambda-weighted agreement with both
# labels of each mixed image; train_acc_dominant: agreement with the label holding the larger share.
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "train_acc_dominant", "val_loss", "val_acc",
                  "best_val_acc", "epoch_seconds")
# Settings that may differ when resuming: they change how the run executes, not what it computes.
RESUME_MAY_CHANGE = {"out", "resume", "device", "progress", "num_workers", "compile", "cuda_graphs", "download",
                     "data_dir", "stop_after_epochs", "time_limit"}
CHECK_FINITE_EVERY = 50  # steps between host syncs that check the loss (and refresh the progress bar)
# --time-limit extrapolates a process's first epoch from the steps after these: compilation, cuDNN autotuning and
# CUDA graph capture happen in them once, not in every epoch
UNTIMED_STEPS = 3


class DivergedError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------------
# The recipe's pieces (also used by lib.bench, so the benchmark times exactly what training runs)
# ----------------------------------------------------------------------------------------------------
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
    predictions of the larger share's label. ``coins`` (lib.models.StochasticDepthCoins): the step's
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


# ----------------------------------------------------------------------------------------------------
# Run folder: history.csv, config.json, checkpoints
# ----------------------------------------------------------------------------------------------------
def write_history(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        w.writerows(rows)


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "lib": __version__}


def _started_at(run_dir: Path, resumed: bool) -> str:
    """When the run's first epoch started (UTC, ISO 8601): kept across --resume; "newest run" is by this time."""
    if resumed:
        try:
            stored = json.loads((run_dir / "config.json").read_text()).get("started_at")
            if stored:
                return stored
        except (OSError, ValueError):
            pass
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _check_resume_config(cfg: RunConfig, ckpt: dict[str, Any], path: Path) -> None:
    """A resumed run keeps its settings and its architecture: one history never mixes two models or recipes."""
    stored, now = ckpt["config"], cfg.to_dict()
    changed = [k for k in now if k not in RESUME_MAY_CHANGE and k not in MODEL_FIELDS and k in stored
               and stored[k] != now[k]]  # the model's fields: compared as the architecture they build, below
    changes = [f"--{k.replace('_', '-')} {stored[k]!r} -> {now[k]!r}" for k in changed]
    model_now = resolve_config(cfg.model, num_classes=ckpt["model_config"].get("num_classes", 10),
                               **cfg.model_overrides())  # the architecture the same settings now build
    changes += [f"model {k} {v!r} -> {model_now[k]!r}" for k, v in ckpt["model_config"].items()
                if k in model_now and model_now[k] != v]
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: written by an earlier version of lib.train (checkpoint format {ckpt['format']}, "
                        f"before the original notebooks' models and recipe); it cannot be continued"
                        + (f" (this version would change {', '.join(changes)})" if changes else "")
                        + ": start a new --out")
    if changes:
        raise UserError(f"{path}: --resume must keep the run's settings, but these differ: {', '.join(changes)} "
                        f"(start a new --out to change them)")


def _open_run(cfg: RunConfig, run_dir: Path, catch_up: bool = True) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: a new run). Call with the run folder held (catch_up: it writes)."""
    last_path = run_dir / "last.pt"
    if not last_path.exists():
        if cfg.resume:
            print(f"{last_path}: nothing to resume yet; starting a new run", file=sys.stderr)
        return None
    if not cfg.resume:
        raise UserError(f"{run_dir}: already holds a run (last.pt); pass --resume to continue it "
                        f"or choose another --out")
    ckpt = read_checkpoint(last_path, resume=True)
    _check_resume_config(cfg, ckpt, last_path)
    if catch_up:
        _catch_up(run_dir, ckpt)
    return ckpt


def _catch_up(run_dir: Path, ckpt: dict[str, Any]) -> None:
    """A run killed (kill -9, power loss) between last.pt and the files after it left those an epoch behind:
    last.pt then holds the newest epoch. Bring best.pt and history.csv level with it before going on."""
    best_path = run_dir / "best.pt"
    if ckpt.get("best_epoch") == ckpt["epoch"]:  # last.pt's own epoch is the best one
        try:
            best_epoch = read_checkpoint(best_path)["epoch"]
        except UserError:  # absent or damaged: last.pt has what belongs there
            best_epoch = None
        if best_epoch != ckpt["epoch"]:
            with atomic_path(best_path) as tmp:
                shutil.copyfile(run_dir / "last.pt", tmp)
    write_history(ckpt["history"], run_dir / "history.csv")


def _show_progress(cfg: RunConfig) -> bool:
    """Bars on a terminal or in a notebook (tqdm.auto draws a widget); redirected to a log, one line an epoch.

    A notebook's shell is ipykernel's ZMQInteractiveShell or a subclass of it (Colab's google.colab._shell.Shell),
    found by name along the class's MRO so that ipykernel is not imported here."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    in_notebook = any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__)
    return cfg.progress and (sys.stderr.isatty() or in_notebook)


# ----------------------------------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------------------------------
def train(cfg: RunConfig, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one run as configured; returns {"run_dir", "best_val_acc", "epochs_done", "history"}.

    ``on_epoch(row)`` is called with each epoch's history row once its checkpoint and history.csv are written.
    The run folder is held by this process throughout (``lib.runlock``); SIGTERM stops it like Ctrl-C.
    """
    started = time.monotonic()  # --time-limit counts from here
    cfg.validate()
    device = resolve_device(cfg.device)  # every setting is checked before any file is touched
    if cfg.cuda_graphs and device.type != "cuda":
        raise UserError(f"--cuda-graphs: needs a CUDA device (this run is on {device.type})")
    run_dir = Path(cfg.out)
    ctx = distributed.setup(cfg.device, cfg.sync_bn)  # under torchrun: this process's rank; else rank 0 of 1
    if cfg.cuda_graphs and ctx.active:  # DDP's gradient all-reduce runs inside the backward pass
        ctx.close()
        raise UserError("--cuda-graphs: one process only (not under torchrun)")
    if not ctx.is_main:  # rank 0 alone holds and writes the run folder and shows progress
        cfg = dataclasses.replace(cfg, progress=False)
    try:
        # torchrun: a signal to any rank stops all of them at the same step (pending_signal, _check_in)
        with hold_run_dir(run_dir) if ctx.is_main else nullcontext(), interrupts_handled(shared=ctx.active):
            return _train_held(cfg, ctx.device(device), run_dir, on_epoch, ctx, started)
    finally:
        ctx.close()


def _train_held(cfg: RunConfig, device: torch.device, run_dir: Path, on_epoch,
                ctx: distributed.Context = distributed.Context(), started: float | None = None) -> dict[str, Any]:
    last_path = run_dir / "last.pt"
    resume_ckpt = _open_run(cfg, run_dir, catch_up=ctx.is_main)
    dtype = amp_dtype(device) if cfg.amp else None
    channels_last = resolve_channels_last(cfg.channels_last, device)
    loader_kind = resolve_loader_kind(cfg.loader, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every training shape is fixed (drop_last): autotune once per shape

    # --- data -------------------------------------------------------------------------------------
    if cfg.profile == "smoke":
        ensure_smoke_data(cfg.data_dir)  # synthetic CIFAR-format files when no CIFAR-10 is there
    splits = load_splits(cfg.data_dir, val_source=cfg.val_source, holdout_fraction=cfg.holdout_fraction,
                         train_size=cfg.train_size, val_size=cfg.val_size, seed=cfg.seed, download=cfg.download)
    if resume_ckpt is not None:  # the run's own statistics, so a resumed run normalises exactly as before
        mean, std = resume_ckpt["normalization"]["mean"], resume_ckpt["normalization"]["std"]
    else:
        mean, std = (list(map(float, v)) for v in channel_stats(splits.train_x))

    seed_everything(cfg.seed)  # model initialisation
    model = build_model(cfg.model, num_classes=len(splits.label_names), **cfg.model_overrides())
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    step_model = ctx.wrap(model, cfg.sync_bn, device)  # DDP under torchrun; `model` itself is checkpointed
    train_loader = ctx.shard(make_train_loader(cfg, splits.train_x, splits.train_y, mean, std, device, loader_kind),
                             cfg.batch_size, cfg.seed)  # under torchrun: this rank's slice of each global batch
    val_loader = make_eval_loader(splits.val_x, splits.val_y, mean, std, device,
                                  batch_size=max(2 * cfg.batch_size, 256))
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, len(train_loader))
    criterion = make_criterion(cfg)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None  # bf16 needs no scaling
    coins = stochastic_depth_coins(model, cfg.seed)  # the same blocks dropped on every rank
    if cfg.compile:  # checkpoints and evaluation use `model` itself
        step_model = compile_model(step_model, cuda_graphs=cfg.cuda_graphs)

    history: list[dict[str, Any]] = []
    best_val_acc, best_epoch, start_epoch = 0.0, 0, 0
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        load_optimizer_state(optimizer, resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if scaler is not None and resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        history, best_val_acc, start_epoch = resume_ckpt["history"], resume_ckpt["best_val_acc"], resume_ckpt["epoch"]
        best_epoch = resume_ckpt.get("best_epoch", 0)
        print(f"{run_dir}: all {cfg.epochs} epochs already done" if start_epoch >= cfg.epochs else
              f"resuming {run_dir} at epoch {start_epoch + 1}/{cfg.epochs}", file=sys.stderr)
    stop_epoch = min(cfg.epochs, cfg.stop_after_epochs or cfg.epochs)  # epochs 1..stop_epoch of the schedule

    data_info = {"source": splits.source, "description": splits.description, "official": splits.data_official,
                 "n_train": int(len(splits.train_y)), "n_val": int(len(splits.val_y))}
    if ctx.is_main:
        save_config(cfg, run_dir / "config.json", extra={
            "model_config": model.config, "parameters": count_parameters(model),
            "data_source": splits.source, "data_description": splits.description,
            "data_official": splits.data_official, "n_train": data_info["n_train"], "n_val": data_info["n_val"],
            "normalization": {"mean": mean, "std": std}, "label_names": list(splits.label_names),
            "warmup_epochs_used": cfg.warmup_epochs_used(),
            "loader": loader_kind, "amp_dtype": str(dtype).replace("torch.", "") if dtype else None,
            "channels_last": channels_last, "steps_per_epoch": len(train_loader),
            "versions": _versions(), "device_name": _device_name(device), "git_commit": _git_commit(),
            "started_at": _started_at(run_dir, resume_ckpt is not None),
            "world_size": ctx.world_size})

    def checkpoint(epoch: int) -> dict[str, Any]:
        # No RNG state: every epoch reseeds all RNGs from (seed, epoch), which is what makes resume exact.
        return {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model_config": model.config,
                "normalization": {"mean": mean, "std": std}, "label_names": list(splits.label_names),
                "data": data_info, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch, "best_epoch": best_epoch, "best_val_acc": best_val_acc, "history": history}

    if ctx.is_main:
        print(f"{cfg.model}: {count_parameters(model) / 1e6:.2f}M parameters | {splits.description} | "
              f"{device} ({loader_kind} loader, amp={dtype}, channels_last={channels_last})"
              + (f" | {ctx.world_size} processes (torchrun)" if ctx.active else ""), file=sys.stderr)
    epoch, stopped, next_epoch_seconds = start_epoch, None, None
    try:
        for epoch in range(start_epoch, stop_epoch):
            stopped = _stop_before_epoch(cfg, ctx, started, next_epoch_seconds)
            if stopped:
                break
            seed_everything(epoch_seed(cfg.seed, epoch) + ctx.seed_offset())  # each rank its own augmentation
            if hasattr(train_loader, "set_epoch"):  # torchrun: the epoch's global batch order
                train_loader.set_epoch(epoch)
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]  # the lr of the epoch's first step
            timing = {} if epoch == start_epoch else None  # this process's first epoch: compiles, autotunes
            train_loss, train_acc, train_acc_dominant = ctx.average(*_train_epoch(
                cfg, step_model, train_loader, optimizer, scheduler, criterion, scaler, dtype, epoch, last_path,
                ctx, timing, coins))
            # ctx.average: over the ranks' equal shares
            val_loss, val_acc = evaluate(model, val_loader, dtype)
            if not history or val_acc > best_val_acc:  # strictly better: the first epoch of a tie stays best
                best_val_acc, best_epoch = val_acc, epoch + 1
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                   "train_acc_dominant": train_acc_dominant, "val_loss": val_loss, "val_acc": val_acc,
                   "best_val_acc": best_val_acc, "epoch_seconds": time.perf_counter() - t0}
            history.append(row)
            if not ctx.is_main:  # rank 0's time, with its checkpoint, is the larger one (_stop_before_epoch)
                next_epoch_seconds = _next_epoch_seconds(time.perf_counter() - t0, timing)
                continue
            # Order: last.pt, best.pt, history.csv, with Ctrl-C/SIGTERM held back meanwhile. A kill -9 in
            # between leaves history.csv (and best.pt) one epoch behind last.pt, never ahead; _catch_up on
            # --resume levels them, so best.pt is always the epoch history.csv calls best.
            with signals_deferred():
                _save_epoch(checkpoint(epoch + 1), run_dir, best_epoch == epoch + 1)
            print(f"epoch {epoch + 1:>3}/{cfg.epochs}  lr {lr:.4f}  train_loss {train_loss:.4f}  "
                  f"train_acc {train_acc:.2%}  val_loss {val_loss:.4f}  val_acc {val_acc:.2%}  "
                  f"best {best_val_acc:.2%}  {row['epoch_seconds']:.1f}s", flush=True)
            if on_epoch is not None:
                on_epoch(dict(row))
            # training, validation, checkpoint and callback
            next_epoch_seconds = _next_epoch_seconds(time.perf_counter() - t0, timing)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (lib.runlock.Terminated)
        why = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{why} during epoch {epoch + 1}/{cfg.epochs}: it is abandoned; {run_dir} keeps epochs 1-"
              f"{len(history)} (last.pt, history.csv). To continue, run again with the same settings and "
              f"--resume", file=sys.stderr)
        raise
    done = len(history)
    if done < cfg.epochs:
        why = stopped or f"--stop-after-epochs {cfg.stop_after_epochs}"
        if ctx.is_main:
            print(f"stopped after epoch {done} of {cfg.epochs} ({why}); {run_dir} holds "
                  f"{cfg.schedule_words(done)}. To continue, run again with the same settings and --resume",
                  file=sys.stderr)
        else:  # each rank's own log says where it stopped: the same epoch as rank 0
            print(f"process {ctx.rank}: stopped after epoch {done} of {cfg.epochs} ({why})", file=sys.stderr)
    return {"run_dir": str(run_dir), "best_val_acc": best_val_acc, "epochs_done": done, "history": history,
            "schedule": cfg.schedule_words(done)}


def _save_epoch(state: dict[str, Any], run_dir: Path, is_best: bool) -> None:
    """last.pt, best.pt (``is_best``) and history.csv of epoch ``state["epoch"]``, in that order (see the loop).
    One that cannot be written ends the run with WriteFailedError: until last.pt is written the folder holds the
    epoch before, complete; after it, --resume levels best.pt and history.csv with it (_catch_up)."""
    epoch, history = state["epoch"], state["history"]

    def checkpoint_bytes() -> int:
        buffer = io.BytesIO()
        try:
            torch.save(state, buffer)
        except Exception:  # noqa: BLE001 - only a size for the message: the tensors' bytes, nearly all of it
            return sum(t.numel() * t.element_size() for d in (state["model"], *state["optimizer"]["state"].values())
                       for t in d.values() if isinstance(t, torch.Tensor))
        return buffer.tell()

    def history_bytes() -> int:
        tmp = io.StringIO()
        w = csv.DictWriter(tmp, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        w.writerows(history)
        return len(tmp.getvalue().encode())

    write_or_explain(run_dir / "last.pt", lambda p: atomic_torch_save(state, p), checkpoint_bytes, run_dir,
                     epoch - 1)
    if is_best:
        write_or_explain(run_dir / "best.pt", lambda p: atomic_torch_save(state, p), checkpoint_bytes, run_dir,
                         epoch)
    write_or_explain(run_dir / "history.csv", lambda p: write_history(history, p), history_bytes, run_dir, epoch)


def _stop_before_epoch(cfg: RunConfig, ctx: distributed.Context, started: float | None,
                       next_epoch_seconds: float | None) -> str | None:
    """Why to stop before the next epoch (None: go on), the same on every rank: under torchrun the ranks'
    elapsed times, predictions and pending signals are maxed over the ranks first. A signal raises here."""
    elapsed = time.monotonic() - started if started is not None else 0.0
    signum = pending_signal()
    if ctx.active:
        elapsed, predicted, signum = ctx.max_over_ranks(
            elapsed, -1.0 if next_epoch_seconds is None else next_epoch_seconds, signum)
        next_epoch_seconds = None if predicted < 0 else predicted
    if signum:
        raise_for(int(signum))
    if cfg.time_limit is None or next_epoch_seconds is None:
        return None
    return _out_of_time(cfg.time_limit, elapsed, next_epoch_seconds)


def _out_of_time(limit_minutes: float, elapsed: float, next_epoch_seconds: float) -> str | None:
    """Why to stop before the next epoch (None: it is predicted to fit): the next epoch is predicted to take
    ``next_epoch_seconds`` (_next_epoch_seconds), plus 5%."""
    if elapsed + 1.05 * next_epoch_seconds > 60 * limit_minutes:
        return (f"--time-limit {limit_minutes:g} minutes: {elapsed / 60:.1f} minutes gone, the next epoch "
                f"(about {next_epoch_seconds:.0f} s) would not fit")
    return None


def _next_epoch_seconds(epoch_seconds: float, timing: dict[str, float] | None) -> float:
    """The next epoch takes as long as this one did (training, validation, checkpoint), except that in a
    process's first epoch (``timing`` from _train_epoch) the first UNTIMED_STEPS steps, which compile and
    autotune, are counted as long as the steps after them."""
    if not timing or "warm_at" not in timing:
        return epoch_seconds
    steady = (timing["end"] - timing["warm_at"]) * timing["steps"] / (timing["steps"] - timing["warm_step"])
    return epoch_seconds - (timing["end"] - timing["start"]) + steady


def _check_in(ctx: distributed.Context, mean_loss: float, epoch: int, step: int, last_path: Path) -> None:
    """Stop here if the loss is not finite or a signal came, on any rank: every rank checks in at the same
    steps, so all of them stop together and none waits in a collective for one that left."""
    diverged = 0 if math.isfinite(mean_loss) else ctx.rank + 1
    signum = pending_signal()
    if ctx.active:
        diverged, signum = ctx.max_over_ranks(diverged, signum)
    if diverged:
        what = f"loss became {mean_loss}" if not math.isfinite(mean_loss) else \
            f"loss became non-finite in process {int(diverged) - 1}"
        raise DivergedError(
            f"{what} at epoch {epoch + 1}, step {step}; stopped. Last good "
            f"checkpoint: {last_path if last_path.exists() else 'none yet'}. Try a lower --lr.")
    if signum:
        raise_for(int(signum))


def _train_epoch(cfg, step_model, train_loader, optimizer, scheduler, criterion, scaler, dtype, epoch,
                 last_path, ctx: distributed.Context = distributed.Context(),
                 timing: dict[str, float] | None = None, coins=None) -> tuple[float, float, float]:
    """One pass over the training batches, in train mode; returns (mean loss, lambda-weighted accuracy,
    accuracy against the dominant label). ``timing``: filled with when the steps after UNTIMED_STEPS began."""
    device = next(step_model.parameters()).device
    step_model.train()  # evaluate() left the model in eval mode: dropout, stochastic depth and BN updates on
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    correct_dominant = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
               disable=not _show_progress(cfg), mininterval=1.0, dynamic_ncols=True)
    steps = len(train_loader)
    if timing is not None:
        timing["start"] = time.perf_counter()
    for step, (x, soft_y) in enumerate(bar, 1):
        loss, n_correct, n_dominant = train_step(step_model, x, soft_y, optimizer, scheduler, criterion, scaler,
                                                 dtype, coins)
        loss_sum += loss
        correct += n_correct
        correct_dominant += n_dominant
        seen += len(soft_y)
        if timing is not None and step == UNTIMED_STEPS < steps:
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # once a run: the steps so far have run, not just been queued
            timing.update(warm_step=step, warm_at=time.perf_counter(), steps=steps)
        if step % CHECK_FINITE_EVERY == 0 or step == steps:
            mean_loss = loss_sum.item() / step  # one host sync every CHECK_FINITE_EVERY steps
            _check_in(ctx, mean_loss, epoch, step, last_path)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{correct.item() / seen:.3f}", refresh=False)
    bar.close()
    if timing is not None:
        timing["end"] = time.perf_counter()
    return loss_sum.item() / len(train_loader), correct.item() / seen, correct_dominant.item() / seen


def parse_args(argv: list[str] | None = None) -> RunConfig:
    parser = ArgumentParser(prog="python -m lib.train", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    args = vars(parser.parse_args(argv))
    profile = args.pop("profile") or "paper"
    return make_config(profile, **args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_args(argv)
    try:
        summary = train(cfg)
    except DivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except WriteFailedError as exc:  # run_cli: one line, exit code WRITE_FAILED_EXIT_CODE
        again = argv if "--resume" in argv or not exc.complete_epochs else [*argv, "--resume"]
        raise exc.with_command(f"python -m lib.train {shlex.join(again)}") from None
    except KeyboardInterrupt:
        resume = argv if "--resume" in argv else [*argv, "--resume"]
        if distributed.is_main_process():  # under torchrun once, not once per rank
            print(f"continue with: {distributed.launch_command()} {shlex.join(resume)}", file=sys.stderr)
        raise  # run_cli: exit code 130 (Ctrl-C) or 143 (SIGTERM)
    if distributed.is_main_process():
        done = summary["epochs_done"]
        print(f"best val accuracy {summary['best_val_acc']:.2%} after {done} epoch{'' if done == 1 else 's'}; "
              f"run folder {summary['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
