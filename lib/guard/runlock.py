"""One run folder, one writer: an OS lock on ``RUN_DIR/.lock``, and SIGTERM handled like Ctrl-C.

The lock is ``fcntl.flock``: the kernel drops it when the holding process ends in any way (``kill -9``, a lost
Colab runtime, a crash), so a folder is never left locked for good and ``--resume`` just proceeds.
SIGTERM (Slurm, Colab, preemptible cloud GPUs, ``kill``) raises ``Terminated``, a ``KeyboardInterrupt``: the
epoch in progress is abandoned exactly as on Ctrl-C. Neither signal lands between the writes of one epoch's
last.pt, best.pt and history.csv (``signals_deferred``), so those three always describe the same epochs.
Under torchrun (``interrupts_handled(shared=True)``) a signal is only recorded: the training loop reads
``pending_signal()`` at points every rank reaches and all ranks stop there together, whichever got the signal.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..common import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; training still runs, unguarded
    fcntl = None

LOCK_FILE = ".lock"  # hidden: predict and report never list it
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # 143, what shells and Slurm report for a SIGTERM'd process


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived. A KeyboardInterrupt, so everything that handles Ctrl-C handles this the same way."""
    exit_code = SIGTERM_EXIT_CODE


@contextmanager
def hold_run_dir(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``run_dir`` for this process while the block runs; raise UserError if another process holds it.

    A refused process writes nothing into the folder (opening the existing lock file changes nothing).
    """
    run_dir = Path(run_dir)
    new_dir = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    held = False
    try:
        if fcntl is not None and _lock(fd, run_dir):
            os.ftruncate(fd, 0)  # only now that the lock is ours: who holds it, for the next one to read
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}".encode())
        held = True
        yield
    finally:
        if held:
            _remove_if_unused(run_dir, new_dir)
        os.close(fd)  # closing the last descriptor releases the lock


def _remove_if_unused(run_dir: Path, new_dir: bool) -> None:
    """A start that failed before writing anything (bad data, say) leaves no trace: not even the lock file."""
    try:
        if [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            (run_dir / LOCK_FILE).unlink()  # still ours while the descriptor is open
            if new_dir:
                run_dir.rmdir()
    except OSError:  # another process created something meanwhile: it is theirs now
        pass


def _lock(fd: int, run_dir: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            # some network/FUSE filesystems (e.g. a mounted Drive) cannot lock: warn, do not refuse to train
            print(f"warning: {run_dir}: cannot lock the run folder ({exc.strerror}); make sure only one "
                  f"training writes here", file=sys.stderr)
            return False
    holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
    raise UserError(f"{run_dir}: already in use by a running training ({holder}); wait for it to finish or "
                    f"stop it, or choose another --out")


# ----------------------------------------------------------------------------------------------------------
# Signals: SIGTERM -> Terminated; SIGINT/SIGTERM wait until a checkpoint's writes are done
# ----------------------------------------------------------------------------------------------------------
_deferring = False
_shared = False  # torchrun: signals wait for a point every rank reaches (pending_signal)
_pending: list[int] = []


def raise_for(signum: int):
    """Stop as the signal ``signum`` does: Terminated for SIGTERM, KeyboardInterrupt for SIGINT."""
    if signum == signal.SIGTERM:
        raise Terminated("terminated (SIGTERM)")
    raise KeyboardInterrupt


def _handler(signum, frame):
    if _deferring or _shared:
        _pending.append(signum)
    else:
        raise_for(signum)


def pending_signal() -> int:
    """The signal recorded under ``interrupts_handled(shared=True)`` (SIGTERM before SIGINT), 0 if none."""
    return max(_pending, default=0)  # SIGTERM (15) > SIGINT (2): its exit code wins


@contextmanager
def interrupts_handled(shared: bool = False) -> Iterator[None]:
    """Install the SIGTERM/SIGINT handlers for the block (main thread only: elsewhere Python allows none).

    ``shared``: record the signals only; the caller stops at a point every process reaches (``pending_signal``),
    so that no rank leaves while the others wait for it in a collective."""
    global _shared
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    _shared = shared
    _pending.clear()
    try:
        yield
    except BaseException:
        if shared:  # all ranks stop: torchrun SIGTERMs those still running once one has exited; this one
            previous = {s: signal.SIG_IGN for s in previous}  # still prints its last lines and exits itself
        raise
    finally:
        _shared = False
        _pending.clear()
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM while the block writes; raise for the first one that arrived after it."""
    global _deferring
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        pending = [] if _shared else _pending[:1]  # shared: left for pending_signal()
        if not _shared:
            _pending.clear()
    if pending:
        raise_for(pending[0])
