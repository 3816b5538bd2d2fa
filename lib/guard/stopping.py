"""When a run stops before its last epoch, decided alike on every torchrun rank so that none waits in a collective
for one that left: ``--time-limit`` (the next epoch predicted from this one), a non-finite loss, SIGTERM or Ctrl-C.
``ctx`` is lib.scale.distributed's Context (one process: rank 0 of 1).
"""
from __future__ import annotations

import math
from pathlib import Path

from ..common import UserError
from .runlock import pending_signal, raise_for

CHECK_FINITE_EVERY = 50  # steps between host syncs that check the loss (and refresh the progress bar)
# --time-limit extrapolates a process's first epoch from the steps after these: compilation, cuDNN autotuning and
# CUDA graph capture happen in them once, not in every epoch
UNTIMED_STEPS = 3


class DivergedError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def stop_before_epoch(time_limit: float | None, ctx, elapsed: float,
                      next_epoch_seconds: float | None) -> str | None:
    """Why to stop before the next epoch (None: go on), the same on every rank: under torchrun (``ctx``, a
    lib.scale.distributed.Context) the ranks' elapsed times, predictions and pending signals are maxed over the
    ranks first. A signal raises here."""
    signum = pending_signal()
    if ctx.active:
        elapsed, predicted, signum = ctx.max_over_ranks(
            elapsed, -1.0 if next_epoch_seconds is None else next_epoch_seconds, signum)
        next_epoch_seconds = None if predicted < 0 else predicted
    if signum:
        raise_for(int(signum))
    if time_limit is None or next_epoch_seconds is None:
        return None
    return out_of_time(time_limit, elapsed, next_epoch_seconds)


def out_of_time(limit_minutes: float, elapsed: float, next_epoch_seconds: float) -> str | None:
    """Why to stop before the next epoch (None: it is predicted to fit): ``next_epoch_seconds``, the prediction
    of the function of that name, plus 5%."""
    if elapsed + 1.05 * next_epoch_seconds > 60 * limit_minutes:
        return (f"--time-limit {limit_minutes:g} minutes: {elapsed / 60:.1f} minutes gone, the next epoch "
                f"(about {next_epoch_seconds:.0f} s) would not fit")
    return None


def next_epoch_seconds(epoch_seconds: float, timing: dict[str, float] | None) -> float:
    """The next epoch takes as long as this one did (training, validation, checkpoint), except that in a
    process's first epoch (``timing`` from lib.train) the first UNTIMED_STEPS steps, which compile and
    autotune, are counted as long as the steps after them."""
    if not timing or "warm_at" not in timing:
        return epoch_seconds
    steady = (timing["end"] - timing["warm_at"]) * timing["steps"] / (timing["steps"] - timing["warm_step"])
    return epoch_seconds - (timing["end"] - timing["start"]) + steady


def check_in(ctx, mean_loss: float, epoch: int, step: int, last_path: Path) -> None:
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
