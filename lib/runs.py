"""Run folders as the report reads them (config.json + history.csv), and whether a run is a reproduction.

A run is a reproduction only on CIFAR-10 with every epoch of the paper profile's schedule and no setting that
changes what is computed differing from ``make_config("paper", model=<the run's model>)`` -- the profile itself,
not a hand-kept list. ``Run.shortfalls`` names every difference ("5 of 300 epochs (5-epoch schedule)",
"dropout 0.2"). Settings that change how a run executes, not what it computes, do not count (lib.config.NOT_COUNTED);
mixed precision does not count either, but ``Run.precision`` names it for Table 1's Source ("bf16 AMP", "fp32").
Of several runs of one model, ``newest`` takes the latest, never the best.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

import pandas as pd

from .common import UserError
from .config import NOT_COUNTED, RunConfig, load_config, make_config
from .models import OPTIONS, REPORTED, as_recorded

HISTORY_COLUMNS = ("epoch", "train_acc", "val_acc", "best_val_acc")
# What does not count against a reproduction: lib.config.NOT_COUNTED, the settings of kind length, numerics and
# execution (where and how a run executes, how much of it runs, and the same recipe by another route: loader,
# memory layout, SyncBatchNorm, seed; several processes *without* SyncBatchNorm are counted, see Run.shortfalls).
# Compared on their own: the profile and epochs (named first), amp (named in Source, not counted), the model (the
# table's row) and the architecture options (through the resolved model_config, so dropout=0.1 given explicitly
# for robust_resnet64 is its default, not a change).
_OWN_TERMS = frozenset({"profile", "epochs", "amp", "model"}) | frozenset(OPTIONS)

NOT_A_REPRODUCTION = "NOT a reproduction"


def _value(v) -> str:
    """A setting's value as a user types it: lists comma-separated, floats without trailing zeros."""
    if isinstance(v, (list, tuple)):
        return ",".join(map(_value, v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass
class Run:
    """One run folder: its RunConfig, the extra recorded fields (model_config, data_source, ...), its history,
    and which RunConfig fields config.json recorded (a folder written before a setting existed lacks it)."""

    path: Path
    config: RunConfig
    extra: dict
    history: pd.DataFrame
    recorded: frozenset = frozenset(f.name for f in fields(RunConfig))

    @property
    def model_config(self) -> dict:
        return self.extra["model_config"]

    @property
    def data_source(self) -> str:
        return self.extra.get("data_source", "unknown")

    @property
    def epochs_done(self) -> int:
        """Epochs trained: the rows of history.csv."""
        return len(self.history)

    @property
    def written(self) -> int:
        """When the run started (config.json's started_at, kept across --resume; ns), else when history.csv was
        last written: "newest" among runs of one model. A fresh checkout gives every file about the same time."""
        started = self.extra.get("started_at")
        if started:
            try:
                return int(datetime.fromisoformat(started).timestamp() * 1e9)
            except ValueError:
                pass
        return (self.path / "history.csv").stat().st_mtime_ns

    @property
    def best_val_acc(self) -> float:
        """Highest validation accuracy in history.csv (a fraction; no TTA -- the training loop's number)."""
        return float(self.history["val_acc"].max())

    @property
    def final_val_acc(self) -> float:
        """The last recorded epoch's validation accuracy (not chosen on the validation set, unlike the best)."""
        return float(self.history.sort_values("epoch")["val_acc"].iloc[-1])

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.config.epochs

    @property
    def data_label(self) -> str:
        """The data in the report's words; a copy that is not the official release says so."""
        if self.data_source == "synthetic":
            return "synthetic smoke data"
        if self.data_source != "cifar10":
            return self.data_source
        # data_official: lib.train records whether the files are the official release (its known checksums)
        return {True: "CIFAR-10", False: "CIFAR-10 re-encoded copy, not the official release"}.get(
            self.extra.get("data_official"), "CIFAR-10, release not recorded")

    @property
    def precision(self) -> str:
        """The arithmetic the run trained in (amp_dtype in config.json: what ran, not what was asked for)."""
        if "amp_dtype" not in self.extra:
            return "precision not recorded"
        return {None: "fp32", "bfloat16": "bf16 AMP", "float16": "fp16 AMP"}.get(self.extra["amp_dtype"],
                                                                                 f"{self.extra['amp_dtype']} AMP")

    @property
    def device_label(self) -> str:
        name = self.extra.get("device_name")
        return "device not recorded" if not name else "CPU" if name.startswith("cpu") else name

    def shortfalls(self) -> list[str]:
        """Every way this run differs from the paper profile's full schedule (empty: it is a reproduction)."""
        cfg, why = self.config, []
        paper = make_config("paper", model=cfg.model)
        if self.data_source != "cifar10":
            why.append(self.data_label)
        if cfg.profile != "paper":
            why.append(f"{cfg.profile} profile")
        done, full = self.epochs_done, paper.epochs
        if cfg.epochs != full:
            why.append(f"{done} of {full} epochs ({cfg.epochs}-epoch schedule)" if done < full
                       else f"{done} epochs ({cfg.epochs}-epoch schedule, not {full})")
        elif done < full:
            why.append(f"{done} of {full} epochs")
        # the architecture as built, against the model's own with the paper profile's options
        default = as_recorded(paper.validate())
        mine = as_recorded(self.model_config)
        inert = {"name"}  # where SE or stochastic depth is absent from both, its placement or mode computes nothing
        if not mine.get("se_reduction") and not default.get("se_reduction"):
            inert.add("se_position")
        if not mine.get("stochastic_depth_rate") and not default.get("stochastic_depth_rate"):
            inert.add("stochastic_depth_mode")
        why += [f"{k} {_value(mine[k])}" for k in default if k not in inert and k in mine and mine[k] != default[k]]
        unrecorded = [k for k in default if k not in mine]
        for f in fields(RunConfig):
            if f.name in NOT_COUNTED or f.name in _OWN_TERMS:
                continue
            if f.name not in self.recorded:
                unrecorded.append(f.name)
            elif getattr(cfg, f.name) != getattr(paper, f.name):
                why.append(f"{f.name} {_value(getattr(cfg, f.name))}")
        if unrecorded:  # written by older code: what it did for these is not known from the folder
            why.append(f"not recorded: {', '.join(unrecorded)}")
        processes = int(self.extra.get("world_size") or 1)
        if processes > 1 and not cfg.sync_bn:
            why.append(f"batch norm per process ({processes} processes without sync_bn)")
        return why

    @property
    def is_real(self) -> bool:
        """A reproduction: CIFAR-10, the paper profile's full schedule, no recipe setting changed."""
        return not self.shortfalls()


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder written by ``lib.train``; a missing or corrupt file is a UserError naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    cfg, extra = load_config(run_dir / "config.json")
    if not isinstance(extra.get("model_config"), dict):
        raise UserError(f"{run_dir / 'config.json'}: no model_config (not a run folder written by lib.train)")
    recorded = frozenset(json.loads((run_dir / "config.json").read_text()))
    hist_path = run_dir / "history.csv"
    if not hist_path.is_file():
        raise UserError(f"{hist_path}: no such file (has the run finished an epoch?)")
    try:
        history = pd.read_csv(hist_path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{hist_path}: not a readable history CSV ({' '.join(str(exc).split())})") from None
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise UserError(f"{hist_path}: missing column(s) {', '.join(missing)}")
    if history.empty:
        raise UserError(f"{hist_path}: no epochs recorded yet")
    return Run(run_dir, cfg, extra, history, recorded)


def newest(runs: list[Run]) -> Run:
    """Of several runs, a reproduction before any other, then the one whose history.csv was written last (of equal
    times, as in a fresh checkout of report/runs/, the one given last)."""
    return max(reversed(runs), key=lambda r: (r.is_real, r.written))  # max keeps the first of equals


def newest_per_model(runs: list[Run]) -> list[Run]:
    """One run per model (``newest``), in Table 1's order, then models outside it by name."""
    by_model: dict[str, list[Run]] = {}
    for r in runs:
        by_model.setdefault(r.config.model, []).append(r)
    order = [m for m in REPORTED if m in by_model] + sorted(set(by_model) - set(REPORTED))
    return [newest(by_model[m]) for m in order]
