"""What every command shares: the user-error type, atomic writes, devices, seeding and CLI glue."""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch


class UserError(Exception):
    """A problem the user can fix (a missing file, a bad option). The CLI prints it as one line, exit code 2
    (or the error's own ``exit_code``)."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    An interrupted or failed write never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)  # atomic on POSIX and Windows when on the same filesystem
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when present, else cpu. Asking for cuda without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if (name == "cuda" or name.startswith("cuda:")) and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision for the device: bf16 on GPUs with native bf16 (compute capability 8.0 and up: A100,
    RTX 30xx, L4, H100), fp16 (with a GradScaler) on older ones (T4, V100), none on CPU.

    Not ``torch.cuda.is_bf16_supported()``: it also answers yes where bf16 is only emulated, which is slow.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    if torch.version.hip:  # ROCm reports its own capability numbers; ask it directly
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line on stderr (no usage dump) and exits with code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a CLI entry point: expected errors become one line on stderr and exit code 2, no traceback."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:  # only the project's own: any other exception is a bug and keeps its traceback
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt as exc:  # Ctrl-C: 130; SIGTERM arrives as lib.guard.runlock.Terminated, exit_code 143
        print(str(exc) or "interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)
