"""One training run: the recipe's pieces (lib.recipe) in a loop over epochs, per-epoch history and atomic
checkpoints (lib.checkpoint), partial schedules (lib.guard.stopping), and torchrun processes (lib.scale.distributed).

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

import dataclasses
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .augment import make_eval_loader, make_train_loader, resolve_channels_last, resolve_loader_kind
from .checkpoint import CHECKPOINT_FORMAT, device_name, git_commit, open_run, save_epoch, started_at, versions
from .common import ArgumentParser, UserError, amp_dtype, resolve_device, run_cli, seed_everything
from .config import RunConfig, add_config_arguments, make_config, save_config
from .data import channel_stats, load_splits
from .guard import stopping
from .guard.runlock import Terminated, hold_run_dir, interrupts_handled, signals_deferred
from .guard.stopping import CHECK_FINITE_EVERY, UNTIMED_STEPS, DivergedError
from .guard.writes import WriteFailedError
from .models import build, count_parameters
from .recipe import (compile_model, epoch_seed, evaluate, load_optimizer_state, make_criterion, make_optimizer,
                     make_scheduler, stochastic_depth_coins, train_step)
from .scale import distributed
from .sources.synthetic import ensure_smoke_data


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
    The run folder is held by this process throughout (``lib.guard.runlock``); SIGTERM stops it like Ctrl-C.
    """
    started = time.monotonic()  # --time-limit counts from here
    model_config = cfg.validate()  # the architecture, resolved once for the run
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
        # torchrun: a signal to any rank stops all of them at the same step (lib.guard.stopping)
        with hold_run_dir(run_dir) if ctx.is_main else nullcontext(), interrupts_handled(shared=ctx.active):
            return _train_held(cfg, model_config, ctx.device(device), run_dir, on_epoch, ctx, started)
    finally:
        ctx.close()


def _train_held(cfg: RunConfig, model_config: dict[str, Any], device: torch.device, run_dir: Path, on_epoch,
                ctx: distributed.Context = distributed.Context(), started: float | None = None) -> dict[str, Any]:
    last_path = run_dir / "last.pt"
    resume_ckpt = open_run(cfg, model_config, run_dir, catch_up=ctx.is_main)
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
    model = build(model_config)  # 10 classes: lib.data reads exactly the ten CIFAR-10 label names
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
            "versions": versions(), "device_name": device_name(device), "git_commit": git_commit(),
            "started_at": started_at(run_dir, resume_ckpt is not None),
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
            elapsed = time.monotonic() - started if started is not None else 0.0
            stopped = stopping.stop_before_epoch(cfg.time_limit, ctx, elapsed, next_epoch_seconds)
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
            if not ctx.is_main:  # rank 0's time, with its checkpoint, is the larger one (stopping.stop_before_epoch)
                next_epoch_seconds = stopping.next_epoch_seconds(time.perf_counter() - t0, timing)
                continue
            # Order: last.pt, best.pt, history.csv, with Ctrl-C/SIGTERM held back meanwhile. A kill -9 in
            # between leaves history.csv (and best.pt) one epoch behind last.pt, never ahead; catch_up on
            # --resume levels them, so best.pt is always the epoch history.csv calls best.
            with signals_deferred():
                save_epoch(checkpoint(epoch + 1), run_dir, best_epoch == epoch + 1)
            print(f"epoch {epoch + 1:>3}/{cfg.epochs}  lr {lr:.4f}  train_loss {train_loss:.4f}  "
                  f"train_acc {train_acc:.2%}  val_loss {val_loss:.4f}  val_acc {val_acc:.2%}  "
                  f"best {best_val_acc:.2%}  {row['epoch_seconds']:.1f}s", flush=True)
            if on_epoch is not None:
                on_epoch(dict(row))
            # training, validation, checkpoint and callback
            next_epoch_seconds = stopping.next_epoch_seconds(time.perf_counter() - t0, timing)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (lib.guard.runlock.Terminated)
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
            stopping.check_in(ctx, mean_loss, epoch, step, last_path)
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
