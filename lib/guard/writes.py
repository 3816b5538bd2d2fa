"""A file of the run folder that cannot be written (a full disk, a quota, no permission, the folder gone) ends the
run with one line: the file, why, the free space against what it needs, the epochs the folder keeps complete and
the command that continues it (exit code WRITE_FAILED_EXIT_CODE). What was there before stays intact.
"""
from __future__ import annotations

import errno
import gc
import io
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ..common import UserError

# sysexits.h's EX_IOERR, "an error occurred while doing I/O on some file"
WRITE_FAILED_EXIT_CODE = 74


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


def torch_save_size(obj: Any) -> int:
    """The bytes ``torch.save(obj)`` writes, saved to memory; should that fail too, its tensors' bytes (nearly all)."""
    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
        return buffer.tell()
    except Exception:  # noqa: BLE001 - only a size for the message
        return _tensor_bytes(obj)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        obj = list(obj.values())
    return sum(_tensor_bytes(v) for v in obj) if isinstance(obj, (list, tuple)) else 0
