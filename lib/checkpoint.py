"""Checkpoints: lib.train writes them; this is the one reader (resume, prediction, evaluation), with one error
policy: a missing, truncated, foreign or unreadable file is a UserError naming it, in one line.

Loading uses ``weights_only=True``: a checkpoint is a pickle and must not be able to run code.
"""
from __future__ import annotations

import errno
import gc
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .common import WRITE_FAILED_EXIT_CODE, UserError
from .models import LEGACY_OPTIONS, build_model

# 2: the original notebooks' models and recipe (SE on the block input, whole-batch stochastic depth, Kaiming init,
# per-epoch cosine). Format 1 files still load for prediction, read as the models they were trained with (model
# options absent from their model_config take LEGACY_OPTIONS); --resume refuses them (lib.train says what changed).
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)
# RunConfig settings absent from a format-1 checkpoint's config, as that version ran them
LEGACY_RECIPE = {"lr_step": "iteration", "erasing_max_area": 0.33, "erasing_value": "zero"}
REQUIRED_KEYS = ("format", "config", "model_config", "normalization", "model", "epoch")
RESUME_KEYS = ("optimizer", "scheduler", "history", "best_val_acc")  # what last.pt adds for --resume


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    resume: bool = False) -> dict[str, Any]:
    """The checkpoint dict, checked to be one lib.train wrote (``resume``: with the state --resume needs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the bytes make the loader raise, the file is the problem
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_one_line(exc)})") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a lib.train checkpoint (holds a {type(ckpt).__name__}, expected a dict)")
    missing = [k for k in (*REQUIRED_KEYS, *(RESUME_KEYS if resume else ())) if k not in ckpt]
    if missing:
        raise UserError(f"{path}: not a lib.train checkpoint (missing {', '.join(missing)})")
    if ckpt["format"] not in READABLE_FORMATS:
        raise UserError(f"{path}: checkpoint format {ckpt['format']!r} is not supported (expected "
                        f"{' or '.join(map(str, READABLE_FORMATS))})")
    if not (isinstance(ckpt["model_config"], dict) and isinstance(ckpt["model"], dict)
            and isinstance(ckpt["config"], dict)):
        raise UserError(f"{path}: not a lib.train checkpoint (config, model_config and model must be dicts)")
    if ckpt["format"] == 1:  # se_reduction None meant "no SE" then; now it means the model's default
        ckpt["model_config"] = {**LEGACY_OPTIONS, **ckpt["model_config"]}
        ckpt["model_config"]["se_reduction"] = ckpt["model_config"].get("se_reduction") or 0
        ckpt["config"] = {**LEGACY_RECIPE, **{k: v for k, v in ckpt["config"].items() if v is not None}}
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode on device, checkpoint dict)``: the model rebuilt from the checkpoint's own
    ``model_config`` with its weights."""
    ckpt = read_checkpoint(path, map_location=device)
    try:
        model = build_model(**ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:  # what build/load_state_dict raise for a misfit
        raise UserError(f"{path}: weights do not fit the stored model config ({_one_line(exc)})") from None
    return model.to(device).eval(), ckpt


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(exc).__name__}: {text}"


class WriteFailedError(UserError):
    """A file of the run folder could not be written (full disk, quota, no permission, the folder gone): the
    run ends with one line saying what to do (exit code WRITE_FAILED_EXIT_CODE); what was there stays intact."""

    exit_code = WRITE_FAILED_EXIT_CODE

    def __init__(self, message: str, complete_epochs: int, command: str | None = None):
        super().__init__(message)
        self.message, self.complete_epochs, self.command = message, complete_epochs, command

    def __str__(self) -> str:
        then = f"run {self.command}" if self.command else "run again with the same settings" + (
            " and --resume" if self.complete_epochs else "")
        return self.message + (f"; to continue, make room and {then}" if self.complete_epochs
                               else f"; make room and {then}")

    def with_command(self, command: str) -> "WriteFailedError":
        """The same error, naming the command that continues (or restarts) the run."""
        return WriteFailedError(self.message, self.complete_epochs, command)


def is_write_failure(exc: BaseException) -> bool:
    """An OSError, or the RuntimeError torch.save's zip writer raises when a write stops part-way (a disk that
    fills mid-file: "[enforce fail at inline_container.cc] unexpected pos ..." or "PytorchStreamWriter failed
    writing file ...")."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("unexpected pos", "PytorchStreamWriter"))


def write_or_explain(path: Path, write: Callable[[Path], None], size: Callable[[], int], run_dir: Path,
                     complete_epochs: int) -> None:
    """``write(path)``; a write failure becomes WriteFailedError: the file, why, the free space on its file
    system against ``size()`` bytes, and the epochs ``run_dir`` keeps complete."""
    try:
        write(path)
        return
    except (OSError, RuntimeError) as exc:
        if not is_write_failure(exc):
            raise
        why = (exc.strerror or errno.errorcode.get(exc.errno, "") or str(exc)) if isinstance(exc, OSError) \
            else "the write stopped part-way, as when the disk fills"
    # Measured once the failed write's frames are gone: torch's zip writer keeps the deleted temporary file
    # open (its space still in use) for as long as the exception's traceback holds it.
    gc.collect()
    kept = (f"{run_dir} keeps epochs 1-{complete_epochs} complete (last.pt, history.csv)" if complete_epochs
            else "no epoch is complete yet")
    raise WriteFailedError(f"{path}: could not be written ({why}); {_free_space(path)} free on its file "
                           f"system, {_megabytes(size())} needed; {kept}", complete_epochs)


def _free_space(path: Path) -> str:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # a vanished folder: the file system above it
        folder = folder.parent
    try:
        return _megabytes(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
