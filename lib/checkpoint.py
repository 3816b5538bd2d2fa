"""The run folder: checkpoints (the one reader, for resume, prediction and evaluation, with one error policy: a
missing, truncated, foreign or unreadable file is a UserError naming it, in one line), history.csv, what config.json
records beside the settings, the checks before --resume, and each epoch's files written so that a full disk or a
kill leaves the epochs before complete.

Loading uses ``weights_only=True``: a checkpoint is a pickle and must not be able to run code.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .common import UserError, atomic_path, atomic_torch_save
from .config import MODEL_FIELDS, RESUME_MAY_CHANGE, RunConfig
from .guard.writes import torch_save_size, write_or_explain
from .models import as_recorded, build_model

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
        ckpt["model_config"] = as_recorded({"se_reduction": 0, **ckpt["model_config"]})
        ckpt["config"] = {**LEGACY_RECIPE, **{k: v for k, v in ckpt["config"].items() if v is not None}}
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode on device, checkpoint dict)``: the model rebuilt from the checkpoint's own
    ``model_config`` with its weights. A run folder stands for its best.pt."""
    path = Path(path) / "best.pt" if Path(path).is_dir() else path
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


# ----------------------------------------------------------------------------------------------------
# The run folder: history.csv, config.json's records, resuming, each epoch's files
# ----------------------------------------------------------------------------------------------------
# train_acc: the notebooks' "Approx Train Acc" (Figure 1's training curve): lambda-weighted agreement with both
# labels of each mixed image; train_acc_dominant: agreement with the label holding the larger share.
HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "train_acc_dominant", "val_loss", "val_acc",
                  "best_val_acc", "epoch_seconds")


def history_csv(rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, lineterminator="\r\n")  # csv's default line ending
    w.writeheader()
    w.writerows(rows)
    return text.getvalue()


def write_history(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(history_csv(rows).encode())


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "lib": __version__}


def started_at(run_dir: Path, resumed: bool) -> str:
    """When the run's first epoch started (UTC, ISO 8601): kept across --resume; "newest run" is by this time."""
    if resumed:
        try:
            stored = json.loads((run_dir / "config.json").read_text()).get("started_at")
            if stored:
                return stored
        except (OSError, ValueError):
            pass
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def check_resume_config(cfg: RunConfig, model_config: dict[str, Any], ckpt: dict[str, Any], path: Path) -> None:
    """A resumed run keeps its settings and its architecture (``model_config``: what ``cfg`` builds now): one
    history never mixes two models or recipes."""
    stored, now = ckpt["config"], cfg.to_dict()
    changed = [k for k in now if k not in RESUME_MAY_CHANGE and k not in MODEL_FIELDS and k in stored
               and stored[k] != now[k]]  # the model's fields: compared as the architecture they build, below
    changes = [f"--{k.replace('_', '-')} {stored[k]!r} -> {now[k]!r}" for k in changed]
    changes += [f"model {k} {v!r} -> {model_config[k]!r}" for k, v in ckpt["model_config"].items()
                if k in model_config and model_config[k] != v]
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: written by an earlier version of lib.train (checkpoint format {ckpt['format']}, "
                        f"before the original notebooks' models and recipe); it cannot be continued"
                        + (f" (this version would change {', '.join(changes)})" if changes else "")
                        + ": start a new --out")
    if changes:
        raise UserError(f"{path}: --resume must keep the run's settings, but these differ: {', '.join(changes)} "
                        f"(start a new --out to change them)")


def open_run(cfg: RunConfig, model_config: dict[str, Any], run_dir: Path,
             catch_up: bool = True) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: a new run); ``model_config``: the architecture ``cfg`` builds. Call with
    the run folder held (catch_up: it writes)."""
    last_path = run_dir / "last.pt"
    if not last_path.exists():
        if cfg.resume:
            print(f"{last_path}: nothing to resume yet; starting a new run", file=sys.stderr)
        return None
    if not cfg.resume:
        raise UserError(f"{run_dir}: already holds a run (last.pt); pass --resume to continue it "
                        f"or choose another --out")
    ckpt = read_checkpoint(last_path, resume=True)
    check_resume_config(cfg, model_config, ckpt, last_path)
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


def save_epoch(state: dict[str, Any], run_dir: Path, is_best: bool) -> None:
    """last.pt, best.pt (``is_best``) and history.csv of epoch ``state["epoch"]``, in that order (see the loop).
    One that cannot be written ends the run with WriteFailedError: until last.pt is written the folder holds the
    epoch before, complete; after it, --resume levels best.pt and history.csv with it (catch_up)."""
    epoch, history = state["epoch"], state["history"]

    def checkpoint_bytes() -> int:  # for the message, computed only when a write fails
        return torch_save_size(state)

    write_or_explain(run_dir / "last.pt", lambda p: atomic_torch_save(state, p), checkpoint_bytes, run_dir,
                     epoch - 1)
    if is_best:
        write_or_explain(run_dir / "best.pt", lambda p: atomic_torch_save(state, p), checkpoint_bytes, run_dir,
                         epoch)
    write_or_explain(run_dir / "history.csv", lambda p: write_history(history, p),
                     lambda: len(history_csv(history).encode()), run_dir, epoch)
