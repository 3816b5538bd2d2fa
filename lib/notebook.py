"""The notebooks' set-up, as ordinary tested code. Each notebook's first cell is the same four lines:

    import os, sys, IPython; CLONE = "git clone -q --depth=1 https://github.com/OWNER/REPO.git cifar10"
    COLAB = "google.colab" in sys.modules and not os.path.isdir("lib"); sys.path += ["..", "cifar10"]
    if COLAB and ("/OWNER/" in CLONE or os.system(CLONE)): raise IPython.core.error.UsageError(CLONE)
    from lib.notebook import setup; setup("runs")

On Colab, opened from GitHub (no lib/ in the working folder), it clones the repository into ./cifar10 (CLONE_NAME)
and stops with that one line (an IPython UsageError) while the URL is the placeholder (`make colab-links
REPO=owner/name` writes the real one) or when the clone fails. Elsewhere ``lib`` is found from the repository root
(papermill), from notebooks/ (Jupyter) or from any folder of the checkout one level down.

Everywhere (Jupyter, papermill, Colab), ``setup``
- works from the repository root (found by MARKER, a file only this repository has) and makes ``lib`` importable;
- shows a ``UserError`` as one line in the notebook's words (``resume = True``, not ``--resume``); any other error
  keeps its traceback;
- checks papermill's ``-p`` values before anything runs: a name the parameters cell does not define (with
  ``run_settings``, notebook 03: nor lib.config.RunConfig) stops with one line naming the closest ones (difflib),
  and a list-valued parameter (``widths``) also takes a comma string (``-p widths 45,90,170,340``).
On Colab it also installs what requirements.txt lists and the runtime lacks (a package Colab has is never upgraded)
and, when the notebook keeps anything, mounts Google Drive and keeps it in MyDrive/cifar10-resnets (``lib.drive``).
Notebook 03's ``run_config`` turns its parameters (and any other RunConfig setting papermill injected) into one
RunConfig (``resume = "auto"``), and ``train`` trains a run folder that lies on Drive on the runtime's own disk,
copied into Drive in place after every epoch. Notebooks 04-06 choose their runs and checkpoint with
``report_runs``, ``output_dirs`` and ``best_checkpoint`` (under the smoke profile training the smoke run when it is
absent, as on a fresh Colab runtime); notebook 02 shows library code with ``show_source``.

Colab's paths are parameters (``drive_mount``, ``drive_folder``): tests point them at temporary folders.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.metadata
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .drive import FOLDER as DRIVE_FOLDER, Drive, RunMirror

MARKER = "lib/notebook.py"  # this file: how setup knows a checkout of this repository
CLONE_NAME = "cifar10"  # the folder the first cell clones into on Colab (next to Colab's /content/drive)
FIRST_CELL_PATHS = ("..", CLONE_NAME)  # relative sys.path entries the first cell adds; setup puts the root first
LOCAL_RUNS = "scratch/colab"  # where train() trains a run folder that is on Drive (the runtime's own disk)
PAPERMILL_CELL = "# Parameters"  # the first line of the cell papermill injects after the parameters cell
NOTEBOOK_NAMES = {"out": "run_name"}  # CLI options whose notebook counterpart has another name


@dataclass
class Session:
    """What ``setup`` set up: the repository, whether this is Colab, and the Drive that keeps results (or None)."""
    root: Path
    colab: bool = False
    drive: Drive | None = None

    def on_drive(self, path: str | os.PathLike) -> Path | None:
        """``path`` (relative to the repository) relative to the Drive folder when it lies in it, else None."""
        return self.drive.relative(self.root / path) if self.drive is not None else None


_session: Session | None = None


def current() -> Session:
    """The Session of the last ``setup`` (outside a notebook: the working folder, nothing on Drive)."""
    return _session or Session(Path.cwd())


# ----------------------------------------------------------------------------------------------------------
# setup
# ----------------------------------------------------------------------------------------------------------
def setup(*keep: str, root: str | os.PathLike | None = None, extras: Iterable[str] = (),
          run_settings: bool = False, drive_mount: str | os.PathLike | None = None,
          drive_folder: str = DRIVE_FOLDER) -> None:
    """Set the notebook up (see the module docstring). ``keep``: the paths, relative to the repository, that go
    to Google Drive on Colab; ``root``: the checkout (default: the one this file is in); ``extras``: packages of
    tests/requirements.txt this notebook also needs on Colab (07: ray); ``run_settings``: papermill -p also takes
    every lib.config.RunConfig setting (03); ``drive_mount``: where to mount Drive (default: beside the clone, which
    on Colab is /content/drive). ``current()`` returns what it set up."""
    global _session
    root = Path(root if root is not None else Path(__file__).parents[1]).resolve()
    if not (root / MARKER).is_file():
        raise _user_error(f"{root}: not a checkout of this repository (no {MARKER})")
    os.chdir(root)  # relative paths (data/, runs/, figures/, report/) mean the same in every notebook
    # the first cell's relative entries would mean other folders from the root: the root itself, first
    sys.path[:] = [str(root)] + [p for p in sys.path if p != str(root) and p not in FIRST_CELL_PATHS]
    colab = "google.colab" in sys.modules
    if colab:
        install_missing(root, extras)
    shell = _shell()
    if shell is not None:
        _install_hooks(shell, run_settings)
    keep = tuple(keep)
    session = Session(root, colab)
    if colab and keep:
        session.drive = Drive(drive_mount if drive_mount is not None else _default_mount(root), drive_folder)
        session.drive.mount()
        session.drive.keep(root, keep)
    _session = session


def _default_mount(root: Path) -> Path:
    """Google Drive's mount point: the one root already lies in (a checkout on Drive), else beside the clone."""
    return next((p.parent for p in root.parents if p.name == "MyDrive"), root.parent / "drive")


# ----------------------------------------------------------------------------------------------------------
# Requirements (Colab only): install what is missing, never upgrade what is there
# ----------------------------------------------------------------------------------------------------------
def missing_requirements(lines: Iterable[str], version=importlib.metadata.version) -> tuple[list[str], list[str]]:
    """(requirements no installed package satisfies by name, notes on installed versions outside a range)."""
    from packaging.requirements import Requirement

    missing, notes = [], []
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        try:
            have = version(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if not req.specifier.contains(have, prereleases=True):  # said, not fixed: Colab's own packages stay
            notes.append(f"note: this runtime has {req.name} {have}, requirements.txt asks for {req.specifier}")
    return missing, notes


def install_missing(root: Path, extras: Iterable[str] = ()) -> list[str]:
    """pip-install the lines of requirements.txt (and of tests/requirements.txt naming ``extras``) that nothing
    installed provides. Without --upgrade, so pip keeps every installed package that satisfies the new ones."""
    lines = (root / "requirements.txt").read_text().splitlines()
    extras = tuple(extras)
    if extras:
        dev = (root / "tests" / "requirements.txt").read_text().splitlines()
        lines += [line for line in dev if re.split(r"[\s\[<>=!~;]", line.strip(), maxsplit=1)[0] in extras]
    missing, notes = missing_requirements(lines)
    for note in notes:
        print(note)
    if missing:
        print("installing", ", ".join(missing))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    return missing


# ----------------------------------------------------------------------------------------------------------
# In the notebook: one-line user errors in notebook words, papermill's -p checked, kept files copied
# ----------------------------------------------------------------------------------------------------------
def notebook_words(message: str) -> str:
    """A lib message in a notebook's words: ``--resume`` -> ``resume = True``, ``--no-amp`` -> ``amp = False``,
    ``--epochs 0: ...`` -> ``epochs = 0: ...``, ``pass --x`` -> ``set x``; the CLI keeps its own words."""
    from .config import RunConfig

    flags = {f.name for f in dataclasses.fields(RunConfig) if f.type in ("bool", "Optional[bool]")}

    def option(m: re.Match) -> str:
        negated, name, value = m.group(1), m.group(2).replace("-", "_"), m.group(3)
        word = NOTEBOOK_NAMES.get(name, name)
        if name in flags and not value:
            return f"{word} = {not negated}"
        return f"{word} = {value}:" if value else word

    message = re.sub(r"\bpass --", "set --", message)
    return re.sub(r"(?<![\w-])--(no-)?([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?: ([^\s:]+):)?", option, message)


class NotebookError(Exception):
    """A user's mistake met before IPython's handler for UserError is in place, or while a cell is being
    transformed (papermill's -p): one line wherever IPython shows it."""

    def _render_traceback_(self):  # IPython's hook: what it shows instead of a traceback
        return [f"UserError: {notebook_words(str(self))}"]


@functools.cache
def _error_type() -> type:
    from .common import UserError

    return type("UserError", (NotebookError, UserError), {"__module__": __name__})


def _user_error(message: str) -> Exception:
    """A lib.common.UserError that IPython shows as one line even before ``setup`` installed its handler."""
    return _error_type()(message)


def _show_user_error(shell, etype, value, tb, tb_offset=None):
    """IPython's custom exception handler for UserError: one line, in the notebook's words."""
    shell._showtraceback(etype, value, [f"{etype.__name__}: {notebook_words(str(value))}"])


def parameter_names(source: str) -> dict[str, str | None]:
    """The names a parameters cell assigns, each with its annotation (``widths: list[int] = None``) or None."""
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        tree = ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError:
        return {}
    names = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            names.update({t.id: None for t in stmt.targets if isinstance(t, ast.Name)})
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names[stmt.target.id] = ast.unparse(stmt.annotation)
    return names


def comma_list(text: str, annotation: str = "list") -> list:
    """``"45,90,170,340"`` -> ``[45, 90, 170, 340]`` for a ``list[int]``; items of the form NAME=... start a new
    entry, so ``"dropout=0.0,0.1,lr=0.05"`` -> ``["dropout=0.0,0.1", "lr=0.05"]``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if items and "=" in items[0]:
        grouped = []
        for item in items:
            if "=" in item or not grouped:
                grouped.append(item)
            else:
                grouped[-1] += "," + item
        items = grouped
    kind = {"list[int]": int, "list[float]": float}.get(annotation.replace(" ", ""), str)
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise _user_error(f"{text!r}: expected {kind.__name__}s separated by commas") from None


def run_setting_names() -> dict[str, str | None]:
    """Every lib.config.RunConfig setting, with "list[int]" for the list-valued ones (widths), as parameter_names
    gives them for a parameters cell."""
    from .config import RunConfig

    return {f.name: "list[int]" if "list[int]" in str(f.type) else None for f in dataclasses.fields(RunConfig)}


class ParameterCheck:
    """papermill's injected cell, checked against the parameters cell that ran just before it (an IPython input
    transformer, so nothing of the injected cell runs when a name is wrong). With ``run_settings`` (notebook 03)
    every RunConfig setting is a parameter too, whether or not the parameters cell lists it."""

    def __init__(self, run_settings: bool = False):
        self.previous, self.run_settings = "", run_settings

    def seen(self, result) -> None:  # post_run_cell (IPython >= 7: the result carries the cell's source)
        self.previous = getattr(getattr(result, "info", None), "raw_cell", "") or ""

    def __call__(self, lines: list[str]) -> list[str]:
        if not lines or lines[0].rstrip() != PAPERMILL_CELL:
            return lines
        known = parameter_names(self.previous)
        if not known:
            return lines
        if self.run_settings:  # the cell's own annotation, else RunConfig's
            known = {k: known.get(k) or v for k, v in {**run_setting_names(), **known}.items()}
        tree, changed = ast.parse("".join(lines)), False
        for stmt in tree.body:
            name = stmt.targets[0].id if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name) \
                else None
            if name is None:
                continue
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
                raise _user_error(f"papermill -p {name}: this notebook has no parameter {name}"
                                  + (f"; did you mean {' or '.join(close)}?" if close else "")
                                  + (" (its parameters cell and lib.config.RunConfig list them all)"
                                     if self.run_settings else " (its parameters cell lists them all)"))
            annotation = known[name] or ""
            if annotation.startswith("list") and isinstance(stmt.value, ast.Constant) \
                    and isinstance(stmt.value.value, str):
                stmt.value, changed = ast.Constant(comma_list(stmt.value.value, annotation)), True
        return [line + "\n" for line in ast.unparse(tree).splitlines()] if changed else lines


def _sync_kept(result=None) -> None:  # post_run_cell: the kept files a cell changed go to Drive
    session = current()
    if session.drive is not None:
        session.drive.sync(session.root)


def _shell():
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


_hooks: dict[str, Any] = {}


def _install_hooks(shell, run_settings: bool = False) -> None:
    """Short errors, the papermill check and the copies to Drive; a rerun of the first cell replaces them."""
    from .common import UserError

    if _hooks.get("shell") is not shell:  # another kernel's shell (tests make several): nothing of ours in it
        _hooks.clear()
        _hooks["shell"] = shell
    # IPython takes one custom handler; Colab's own (for ImportError) goes on handling its exceptions
    if "theirs" not in _hooks:
        _hooks["theirs"] = (tuple(shell.custom_exceptions), shell.CustomTB if shell.custom_exceptions else None)
    theirs, their_handler = _hooks["theirs"]

    def handler(shell, etype, value, tb, tb_offset=None):
        if issubclass(etype, UserError):
            return _show_user_error(shell, etype, value, tb, tb_offset)
        return their_handler(etype, value, tb, tb_offset=tb_offset)

    shell.set_custom_exc((UserError, *theirs), handler)
    old = _hooks.pop("check", None)
    if old is not None:
        shell.input_transformers_post.remove(old)
        shell.events.unregister("post_run_cell", old.seen)
        shell.events.unregister("post_run_cell", _hooks.pop("sync"))
    check = ParameterCheck(run_settings)
    shell.input_transformers_post.append(check)
    shell.events.register("post_run_cell", check.seen)
    _hooks.update(check=check, sync=_sync_kept)
    shell.events.register("post_run_cell", _hooks["sync"])


# ----------------------------------------------------------------------------------------------------------
# Notebook 03: its parameters -> one RunConfig; training a run folder that lies on Drive
# ----------------------------------------------------------------------------------------------------------
def run_config(namespace: dict[str, Any]):
    """The RunConfig of notebook 03's parameters: every RunConfig setting by name (None: the profile's), the run
    folder ``runs_dir/run_name`` (run_name None: named after the model, profile and settings given) and
    ``resume`` True, False or "auto" (see ``resume_setting``). Every setting is checked before any file is read."""
    from .config import RunConfig, make_config

    values = {f.name: namespace.get(f.name) for f in dataclasses.fields(RunConfig)}
    profile, resume, progress, out = (values.pop(k) for k in ("profile", "resume", "progress", "out"))
    run_name = namespace.get("run_name") or default_run_name(profile or "paper", values)
    out = out or str(Path(namespace.get("runs_dir") or "runs") / run_name)
    progress = "CIFAR_PROFILE" not in os.environ if progress is None else progress
    cfg = make_config(profile or "paper", **values, out=out, progress=progress)
    return dataclasses.replace(cfg, resume=resume_setting("auto" if resume is None else resume, cfg))


def default_run_name(profile: str, values: dict[str, Any]) -> str:
    """``<model>[_<profile>][_<setting><value>...]``: one folder per setting that changes what a run computes (not
    stop_after_epochs, time_limit, device, ... : lib.train.RESUME_MAY_CHANGE)."""
    from .config import RunConfig
    from .config import RESUME_MAY_CHANGE

    def part(value) -> str:
        text = "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        return re.sub(r"[^\w.+-]", "-", text)

    skip = RESUME_MAY_CHANGE | {"model", "profile", "out", "progress", "resume"}
    return "_".join([values.get("model") or RunConfig.model, *([profile] if profile != "paper" else []),
                     *(f"{k}{part(v)}" for k, v in values.items() if v is not None and k not in skip)])


def resume_setting(resume, cfg) -> bool:
    """``resume`` for lib.train: True and False as given; "auto" continues the run in the folder when it holds a
    last.pt with these settings, starts one when it holds none, and stops (one line) when it holds another run."""
    from .common import UserError

    if resume is True or resume is False:
        return resume
    if resume != "auto":
        raise _user_error(f'resume = {resume!r}: expected "auto", True or False')
    if current().on_drive(cfg.out) is not None:
        current().drive.mount()  # train() unmounts it at the end; the run may be on Drive only
    last = _local_copy(cfg.out) / "last.pt"
    last = last if last.is_file() else Path(cfg.out) / "last.pt"
    if not last.is_file():
        return False
    from .checkpoint import read_checkpoint
    from .checkpoint import check_resume_config as _check_resume_config

    try:
        _check_resume_config(dataclasses.replace(cfg, resume=True), read_checkpoint(last, resume=True), last)
    except UserError as exc:
        raise _user_error(f'resume = "auto": {cfg.out} already holds another run, left as it is; choose another '
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
        raise _user_error("this Colab runtime has no GPU, and the paper profile trains for hours on one (days on a "
                          "CPU): Runtime > Change runtime type > a GPU (T4 is free), then run the notebook again; "
                          'device = "cpu" trains here anyway')


def train(cfg, session: Session | None = None) -> dict[str, Any]:
    """``lib.train.train(cfg)``; a run folder on Google Drive is trained in a folder of this runtime (LOCAL_RUNS)
    whose files are copied into Drive, in place, after every epoch (``lib.drive.RunMirror``), and Drive is flushed
    at the end. Returns train's summary (``run_dir``: the folder trained in) and ``kept_in``: the Drive folder or
    None."""
    from . import train as training

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
        from .config import make_config
        from .train import train as train_run

        print(f"no smoke run in {run}: training it (smoke profile, a minute or two on a CPU)")
        train_run(make_config("smoke", model=model, out=str(run), progress=False, resume=True))
    return run


def report_runs(profile: str, model: str, runs: Iterable[str | os.PathLike] | None = None,
                runs_dir: str | os.PathLike = "runs") -> list[Path]:
    """Notebook 04's run folders: ``runs`` as given; else under the smoke profile the smoke run (``smoke_run``);
    else the newest paper-profile run of each model in ``runs_dir`` (lib.runs.default_runs: never the best of
    several experiments). Empty when there is none."""
    if runs is not None:
        return [Path(r) for r in runs]
    if profile == "smoke":
        return [smoke_run(model, runs_dir)]
    from .runs import default_runs

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
    from .runs import load_run

    candidates = [load_run(p.parent) for p in sorted(Path(runs_dir).glob("*/best.pt"))
                  if (p.parent / "history.csv").is_file() and (p.parent / "config.json").is_file()]
    candidates = [r for r in candidates if r.config.profile == "paper"]
    if not candidates:
        raise _user_error(f"no paper-profile run with a best.pt in {runs_dir}/: train one with notebook 03 (or make "
                          "reproduce), or set run_name or checkpoint")
    return max(candidates, key=lambda r: (r.is_real, r.best_val_acc)).path / "best.pt"


def show_source(*objects) -> None:
    """Each object's source (a class or function of lib), as a highlighted code block in a notebook; notebook 02
    shows the block and the network that build each Table-1 model with it."""
    import inspect

    from IPython.display import Markdown, display

    for obj in objects:
        display(Markdown(f"```python\n{inspect.getsource(obj).rstrip()}\n```"))
