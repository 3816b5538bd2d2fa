"""What notebooks 03-06 call after their set-up: 03's parameters as one RunConfig (``run_config``: any other
RunConfig setting papermill injected too, ``resume = "auto"``) and its run (``train``: a run folder that lies on
Google Drive is trained on the runtime's own disk and copied into Drive in place after every epoch); the runs 04
reports on and where its figure and table go (``report_runs``, ``output_dirs``); the checkpoint 05 and 06 use
(``best_checkpoint``). Under the smoke profile a missing smoke run is trained first, as on a fresh Colab runtime.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable

from .drive import RunMirror
from .notebook import Session, current, notebook_words, user_error

LOCAL_RUNS = "scratch/colab"  # where train() trains a run folder that is on Drive (the runtime's own disk)


def run_config(namespace: dict[str, Any]):
    """The RunConfig of notebook 03's parameters: every RunConfig setting by name (None: the profile's), the run
    folder ``runs_dir/run_name`` (run_name None: named after the model, profile and settings given) and
    ``resume`` True, False or "auto" (see ``resume_setting``). Every setting is checked before any file is read."""
    from ..config import RunConfig, make_config

    values = {f.name: namespace.get(f.name) for f in dataclasses.fields(RunConfig)}
    profile, resume, progress, out = (values.pop(k) for k in ("profile", "resume", "progress", "out"))
    run_name = namespace.get("run_name") or default_run_name(profile or "paper", values)
    out = out or str(Path(namespace.get("runs_dir") or "runs") / run_name)
    progress = "CIFAR_PROFILE" not in os.environ if progress is None else progress
    cfg = make_config(profile or "paper", **values, out=out, progress=progress)
    return dataclasses.replace(cfg, resume=resume_setting("auto" if resume is None else resume, cfg))


def default_run_name(profile: str, values: dict[str, Any]) -> str:
    """``<model>[_<profile>][_<setting><value>...]``: one folder per setting that changes what a run computes (not
    stop_after_epochs, time_limit, device, ...: lib.config.NOT_IN_RUN_NAME)."""
    from ..config import NOT_IN_RUN_NAME, RunConfig

    def part(value) -> str:
        text = "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        return re.sub(r"[^\w.+-]", "-", text)

    return "_".join([values.get("model") or RunConfig.model, *([profile] if profile != "paper" else []),
                     *(f"{k}{part(v)}" for k, v in values.items() if v is not None and k not in NOT_IN_RUN_NAME)])


def resume_setting(resume, cfg) -> bool:
    """``resume`` for lib.train: True and False as given; "auto" continues the run in the folder when it holds a
    last.pt with these settings, starts one when it holds none, and stops (one line) when it holds another run."""
    from ..common import UserError

    if resume is True or resume is False:
        return resume
    if resume != "auto":
        raise user_error(f'resume = {resume!r}: expected "auto", True or False')
    if current().on_drive(cfg.out) is not None:
        current().drive.mount()  # train() unmounts it at the end; the run may be on Drive only
    last = _local_copy(cfg.out) / "last.pt"
    last = last if last.is_file() else Path(cfg.out) / "last.pt"
    if not last.is_file():
        return False
    from ..checkpoint import check_resume_config, read_checkpoint

    try:
        check_resume_config(dataclasses.replace(cfg, resume=True), cfg.validate(), read_checkpoint(last, resume=True),
                            last)
    except UserError as exc:
        raise user_error(f'resume = "auto": {cfg.out} already holds another run, left as it is; choose another '
                          f"run_name (None: one named after the settings). {notebook_words(str(exc))}") from None
    return True


def _local_copy(out: str | os.PathLike) -> Path:
    """Where ``train`` trains a run folder that lies on Drive (else the folder itself)."""
    session = current()
    rel = session.on_drive(out)
    return session.root / LOCAL_RUNS / rel if rel is not None else Path(out)


def check_runtime(cfg, session: Session | None = None) -> None:
    """The paper profile on a Colab runtime without a GPU stops here (300 epochs would take days), unless asked
    for with device = "cpu"."""
    import torch

    session = session or current()
    if session.colab and cfg.profile == "paper" and cfg.device == "auto" and not torch.cuda.is_available():
        raise user_error("this Colab runtime has no GPU, and the paper profile trains for hours on one (days on a "
                          "CPU): Runtime > Change runtime type > a GPU (T4 is free), then run the notebook again; "
                          'device = "cpu" trains here anyway')


def train(cfg, session: Session | None = None) -> dict[str, Any]:
    """``lib.train.train(cfg)``; a run folder on Google Drive is trained in a folder of this runtime (LOCAL_RUNS)
    whose files are copied into Drive, in place, after every epoch (``lib.colab.drive.RunMirror``), and Drive is flushed
    at the end. Returns train's summary (``run_dir``: the folder trained in) and ``kept_in``: the Drive folder or
    None."""
    from .. import train as training

    session = session or current()
    check_runtime(cfg, session)
    rel = session.on_drive(cfg.out)
    if rel is None:
        return _said_how_to_continue(lambda: {**training.train(cfg), "kept_in": None}, cfg)
    session.drive.mount()
    mirror = RunMirror(session.root / LOCAL_RUNS / rel, session.drive.path / rel)
    mirror.restore()
    mirror.sync()  # a copy that failed in an earlier session of this runtime
    print(f"training in {mirror.local} (this runtime's disk); after every epoch its files are copied into "
          f"{mirror.remote} (Google Drive)")
    def run() -> dict[str, Any]:
        try:
            local = dataclasses.replace(cfg, out=str(mirror.local))
            return {**training.train(local, on_epoch=lambda row: mirror.sync()), "kept_in": str(mirror.remote)}
        finally:
            mirror.sync()
            session.drive.flush()
    return _said_how_to_continue(run, cfg)


def _said_how_to_continue(run, cfg) -> dict[str, Any]:
    """Run ``run()``; when it stops before the schedule's end, say how to go on in this notebook's words (lib.train
    says it in the CLI's)."""
    words = 'in this notebook: run it again as it is to continue (resume = "auto")'
    try:
        summary = run()
    except KeyboardInterrupt:  # Ctrl-C, Colab's stop button, SIGTERM
        print(words, file=sys.stderr)
        raise
    if summary["epochs_done"] < cfg.epochs:
        print(f"{words}; stop_after_epochs and time_limit train another part of the {cfg.epochs} epochs",
              file=sys.stderr)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Notebooks 04-06: which runs to report on, which checkpoint to use
# ----------------------------------------------------------------------------------------------------------
SMOKE_OUT = Path("scratch/smoke")  # where a smoke report, figure and submission go (never figures/ or report/)


def smoke_run(model: str, runs_dir: str | os.PathLike = "runs") -> Path:
    """``runs_dir/<model>_smoke``, the smoke run notebook 03 names; trained here when it holds no best.pt (smoke
    profile, a minute or two on a CPU), so 04-06 also work on their own, as on a fresh Colab runtime."""
    run = Path(runs_dir) / f"{model}_smoke"
    if not (run / "best.pt").is_file():
        from ..config import make_config
        from ..train import train as train_run

        print(f"no smoke run in {run}: training it (smoke profile, a minute or two on a CPU)")
        train_run(make_config("smoke", model=model, out=str(run), progress=False, resume=True))
    return run


def default_runs(runs_dir: str | os.PathLike = "runs", profile: str = "paper") -> list[Path]:
    """Notebook 04's default: every run folder directly in ``runs_dir`` trained with ``profile``, newest per model."""
    from ..runs import load_run, newest_per_model

    found = [load_run(p.parent) for p in sorted(Path(runs_dir).glob("*/history.csv"))
             if (p.parent / "config.json").is_file()]
    return [r.path for r in newest_per_model([r for r in found if r.config.profile == profile])]


def runs_overview(runs: list):
    """Notebook 04's overview before Figure 1 and Table 1: a pandas DataFrame, one row per run (model, data, device,
    precision, epochs, best and final validation accuracy, and whether it is a reproduction, else every way it
    differs)."""
    import pandas as pd

    return pd.DataFrame([{"run": str(r.path), "model": r.config.model, "data": r.data_label, "device": r.device_label,
                          "precision": r.precision, "epochs": f"{r.epochs_done} of {r.config.epochs}",
                          "best val acc (%)": round(100 * r.best_val_acc, 2),
                          "final val acc (%)": round(100 * r.final_val_acc, 2),
                          "a reproduction": "yes" if r.is_real else "no: " + "; ".join(r.shortfalls())}
                         for r in runs],
                        columns=["run", "model", "data", "device", "precision", "epochs", "best val acc (%)",
                                 "final val acc (%)", "a reproduction"])


def report_runs(profile: str, model: str, runs: Iterable[str | os.PathLike] | None = None,
                runs_dir: str | os.PathLike = "runs") -> list[Path]:
    """Notebook 04's run folders: ``runs`` as given; else under the smoke profile the smoke run (``smoke_run``);
    else the newest paper-profile run of each model in ``runs_dir`` (``default_runs``: never the best of
    several experiments). Empty when there is none."""
    if runs is not None:
        return [Path(r) for r in runs]
    if profile == "smoke":
        return [smoke_run(model, runs_dir)]
    return default_runs(runs_dir)


def output_dirs(profile: str, figures_dir: str | None = None, report_dir: str | None = None) -> tuple[str, str]:
    """Where Figure 1 and Table 1 go: as given, else figures/ and report/ (smoke: under SMOKE_OUT, so a smoke
    result never lands on the committed figure and table)."""
    base = SMOKE_OUT if profile == "smoke" else Path(".")
    return figures_dir or str(base / "figures"), report_dir or str(base / "report")


def best_checkpoint(profile: str, model: str, runs_dir: str | os.PathLike = "runs", run_name: str | None = None,
                    checkpoint: str | os.PathLike | None = None) -> Path:
    """Notebooks 05 and 06's checkpoint: ``checkpoint``; else ``runs_dir/run_name/best.pt``; else under the smoke
    profile the smoke run's (``smoke_run``); else best.pt of the paper-profile run with the best validation
    accuracy in ``runs_dir``, real CIFAR-10 runs first."""
    if checkpoint is not None:
        return Path(checkpoint)
    if run_name is not None:
        return Path(runs_dir) / run_name / "best.pt"
    if profile == "smoke":
        return smoke_run(model, runs_dir) / "best.pt"
    from ..runs import load_run

    candidates = [load_run(p.parent) for p in sorted(Path(runs_dir).glob("*/best.pt"))
                  if (p.parent / "history.csv").is_file() and (p.parent / "config.json").is_file()]
    candidates = [r for r in candidates if r.config.profile == "paper"]
    if not candidates:
        raise user_error(f"no paper-profile run with a best.pt in {runs_dir}/: train one with notebook 03 (or make "
                          "reproduce), or set run_name or checkpoint")
    return max(candidates, key=lambda r: (r.is_real, r.best_val_acc)).path / "best.pt"


