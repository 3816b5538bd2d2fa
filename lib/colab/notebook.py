"""The notebooks' set-up, as ordinary tested code. Each notebook's first cell is the same four lines:

    import os, sys, IPython; CLONE = "git clone -q --depth=1 https://github.com/OWNER/REPO.git cifar10"
    COLAB = "google.colab" in sys.modules and not os.path.isdir("lib"); sys.path += ["..", "cifar10"]
    if COLAB and ("/OWNER/" in CLONE or os.system(CLONE)): raise IPython.core.error.UsageError(CLONE)
    from lib.colab.notebook import setup; setup("runs")

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
and, when the notebook keeps anything, mounts Google Drive and keeps it in MyDrive/cifar10-resnets
(``lib.colab.drive``).
What notebooks 03-06 call next is in ``lib.colab.runs``; notebook 02 shows library code with ``show_source``.

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

from .drive import FOLDER as DRIVE_FOLDER, Drive

MARKER = "lib/colab/notebook.py"  # this file: how setup knows a checkout of this repository
CLONE_NAME = "cifar10"  # the folder the first cell clones into on Colab (next to Colab's /content/drive)
FIRST_CELL_PATHS = ("..", CLONE_NAME)  # relative sys.path entries the first cell adds; setup puts the root first
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
    root = Path(root if root is not None else Path(__file__).parents[2]).resolve()
    if not (root / MARKER).is_file():
        raise user_error(f"{root}: not a checkout of this repository (no {MARKER})")
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
    from ..config import RunConfig

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
    from ..common import UserError

    return type("UserError", (NotebookError, UserError), {"__module__": __name__})


def user_error(message: str) -> Exception:
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
        raise user_error(f"{text!r}: expected {kind.__name__}s separated by commas") from None


def run_setting_names() -> dict[str, str | None]:
    """Every lib.config.RunConfig setting, with "list[int]" for the list-valued ones (widths), as parameter_names
    gives them for a parameters cell."""
    from ..config import RunConfig

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
                raise user_error(f"papermill -p {name}: this notebook has no parameter {name}"
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
    from ..common import UserError

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


def show_source(*objects) -> None:
    """Each object's source (a class or function of lib), as a highlighted code block in a notebook; notebook 02
    shows the block and the network that build each Table-1 model with it."""
    import inspect

    from IPython.display import Markdown, display

    for obj in objects:
        display(Markdown(f"```python\n{inspect.getsource(obj).rstrip()}\n```"))
