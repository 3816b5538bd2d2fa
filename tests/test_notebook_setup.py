"""lib.colab.notebook, the notebooks' set-up, and each notebook's first cell: as on Colab (google.colab faked, Drive mounted
into a temporary folder, the repository cloned from a local bare repository by file:// URL, a second runtime
continuing the first one's run from Drive) and elsewhere (Jupyter, papermill). Cells run in an in-process IPython
shell, so the input transformer and the exception handler that setup() installs are IPython's own code paths."""
from __future__ import annotations

import ast
import csv
import os
import shutil
import subprocess
import sys
import types
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest
import torch
from IPython.core.interactiveshell import InteractiveShell
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from traitlets.config import Config

import lib.colab.drive
import lib.colab.notebook as nb
import lib.colab.runs as nbruns
from lib.common import UserError
from lib.config import make_config
from lib.train import _show_progress, train

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PLACEHOLDER = "https://github.com/OWNER/REPO.git"
RUN_FILES = {"config.json", "history.csv", "last.pt", "best.pt"}
# a run of about a second an epoch on a CPU: a narrow LightResNet18 on 20 smoke images, validated on 10
TINY = dict(model="light_resnet18", base_channels=4, train_size=20, val_size=10, batch_size=10, progress=False,
            device="cpu")


def first_cell(path: Path) -> str:
    return next(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def history_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------------------
# A Colab runtime, faked: google.colab whose drive.mount() makes the Drive folder appear, an IPython shell
# --------------------------------------------------------------------------------------------------------------
class FakeDrive:
    """google.colab.drive: mount() shows the account's files under MOUNT/MyDrive; flush_and_unmount() takes them
    away again (they stay in `cloud`, as on Google's side), so a second runtime finds what the first one kept."""

    def __init__(self, cloud: Path):
        self.cloud, self.calls = cloud, []
        (cloud / "MyDrive").mkdir(parents=True, exist_ok=True)

    def mount(self, mountpoint):
        self.calls.append(("mount", mountpoint))
        self.mountpoint = Path(mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if not (self.mountpoint / "MyDrive").exists():
            shutil.move(self.cloud / "MyDrive", self.mountpoint / "MyDrive")

    def flush_and_unmount(self):
        self.calls.append(("flush_and_unmount",))
        shutil.move(self.mountpoint / "MyDrive", self.cloud / "MyDrive")


@pytest.fixture
def colab(tmp_path, monkeypatch) -> FakeDrive:
    """google.colab imported, as in every Colab kernel; its Drive is kept in tmp_path/cloud."""
    drive = FakeDrive(tmp_path / "cloud")
    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    google.colab.drive = drive
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    return drive


class Shell(InteractiveShell):
    """IPython's shell without a GUI: %matplotlib inline leaves the backend (Agg) alone."""

    def enable_gui(self, gui=None):
        pass

    def enable_matplotlib(self, gui=None):
        return gui, "agg"


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """A fresh in-process IPython shell (the kernel's code paths without the kernel); cwd, sys.path and the lib
    session are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(nb, "_session", None)
    config = Config()
    config.HistoryManager.enabled = False
    Shell.clear_instance()
    shell = Shell.instance(config=config)
    yield shell
    Shell.clear_instance()


def run(shell, source: str):
    """Run one cell as a kernel does; returns IPython's ExecutionResult."""
    return shell.run_cell(source, store_history=True)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def runtime_lib():
    """Each simulated runtime imports lib from its own clone: the test process's lib modules step aside meanwhile."""
    saved = {k: v for k, v in sys.modules.items() if k == "lib" or k.startswith("lib.")}

    def fresh():
        for k in [k for k in sys.modules if k == "lib" or k.startswith("lib.")]:
            del sys.modules[k]

    fresh()
    yield fresh
    fresh()
    sys.modules.update(saved)


def bare_repository(tmp_path: Path) -> str:
    """This working tree's files (what git tracks, as they are now) as a commit of a local bare repository; its
    file:// URL."""
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(src)], check=True)
    subprocess.run([*git, "-C", str(src), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(src), "commit", "-qm", "snapshot"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(tmp_path / "repo.git")], check=True)
    return (tmp_path / "repo.git").as_uri()


def run_notebook(shell, name: str, repo_url: str, parameters: dict) -> str:
    """NAME's cells as papermill runs them (its injected parameters cell after the parameters cell), with the first
    cell's clone URL set as `make colab-links` sets it; stops at the first failing cell. Returns that cell's id."""
    notebook = parameterize_notebook(load_notebook_node(str(REPO / "notebooks" / f"{name}.ipynb")), parameters)
    for i, c in enumerate(c for c in notebook.cells if c.cell_type == "code"):
        source = c.source.replace(PLACEHOLDER, repo_url) if i == 0 else c.source
        if not run(shell, source).success:
            return c.get("id")
    return None


# --------------------------------------------------------------------------------------------------------------
# The first cell
# --------------------------------------------------------------------------------------------------------------
def test_first_cell_is_short_shared_and_calls_setup():
    cells = {p.stem: first_cell(p) for p in NOTEBOOKS}
    for name, source in cells.items():
        lines = source.splitlines()
        assert len(lines) <= 4 and max(map(len, lines)) <= 100, f"{name}: {len(lines)} lines"
        assert lines[-1].startswith("from lib.colab.notebook import setup; setup(") and lines[-1].endswith(")"), name
        assert source.count(PLACEHOLDER) == 1, name
    bodies = {"\n".join(s.splitlines()[:-1]) for s in cells.values()}
    assert len(bodies) == 1, "one first cell in every notebook; only the setup() call differs"
    assert f" {nb.CLONE_NAME}\"" in next(iter(bodies)), "the cell clones into lib.colab.notebook.CLONE_NAME"
    assert nb.MARKER == "lib/colab/notebook.py" and (REPO / nb.MARKER).is_file()


def kernel_path(monkeypatch) -> None:
    """sys.path as a new kernel has it: the working folder first ("") and no checkout of this repository (pytest
    puts the working tree there); importlib's finders for relative entries such as ".." are made afresh, as in a
    new process (they hold the folder the entry meant when first used)."""
    monkeypatch.setattr(sys, "path", [""] + [p for p in sys.path if p and Path(p).resolve() != REPO])
    monkeypatch.setattr(sys, "path_importer_cache", {})


@pytest.mark.parametrize("start", ["notebooks", "lib", "."])
def test_first_cell_outside_colab_works_from_the_repository_root(shell, start, monkeypatch, runtime_lib):
    """Jupyter starts kernels in notebooks/, papermill wherever it was called: all end up at the root, with lib
    imported from this checkout and the root first on sys.path."""
    kernel_path(monkeypatch)
    monkeypatch.chdir(REPO / start)
    assert run(shell, first_cell(REPO / "notebooks" / "03_training.ipynb")).success
    session = sys.modules["lib.colab.notebook"].current()
    assert Path.cwd() == REPO and sys.path[0] == str(REPO) and session.root == REPO
    assert Path(sys.modules["lib"].__file__).resolve() == REPO / "lib" / "__init__.py"
    assert session.drive is None and not session.colab
    assert ".." not in sys.path and nb.CLONE_NAME not in sys.path  # the cell's relative entries are gone


def test_first_cell_on_colab_with_the_placeholder_url_stops_in_one_line(shell, colab, tmp_path, monkeypatch, capsys,
                                                                        runtime_lib):
    """A working folder with a lib/ folder above it (Colab images have /lib): that is no checkout, and with the
    placeholder URL nothing is cloned (no git, so no password prompt): one line that shows the clone command."""
    kernel_path(monkeypatch)
    (tmp_path / "lib").mkdir()
    (tmp_path / "content").mkdir()
    monkeypatch.chdir(tmp_path / "content")
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a))
    assert not run(shell, first_cell(REPO / "notebooks" / "04_results.ipynb")).success
    line = one_line(capsys.readouterr().err)
    assert line == f"UsageError: git clone -q --depth=1 {PLACEHOLDER} {nb.CLONE_NAME}"  # the placeholder, named
    assert calls == [] and list((tmp_path / "content").iterdir()) == [] and colab.calls == []
    assert "lib" not in sys.modules  # nothing imported: a later run with the real URL imports the clone's lib


def test_first_cell_on_colab_when_the_clone_fails_stops_in_one_line(shell, colab, tmp_path, monkeypatch, capsys,
                                                                     runtime_lib):
    kernel_path(monkeypatch)
    (tmp_path / "content").mkdir()
    monkeypatch.chdir(tmp_path / "content")
    missing = (tmp_path / "no-such-repo.git").as_uri()
    source = first_cell(REPO / "notebooks" / "03_training.ipynb").replace(PLACEHOLDER, missing)
    assert not run(shell, source).success
    assert one_line(capsys.readouterr().err) == f"UsageError: git clone -q --depth=1 {missing} {nb.CLONE_NAME}"
    assert list((tmp_path / "content").iterdir()) == [] and colab.calls == []


def test_colab_clones_trains_into_drive_and_a_new_runtime_continues(shell, colab, runtime_lib, tmp_path,
                                                                     smoke_root, capsys, monkeypatch):
    """Runtime 1 opens 03 from GitHub: the first cell clones the repository (file:// URL), setup mounts Drive and
    links runs/ to it; 1 of 2 epochs is trained. Runtime 2: the clone is gone, Drive is kept; 03 run again with
    the same settings continues the run from Drive. The result equals a run trained in one go."""
    straight = tmp_path / "straight"  # the same run in one go, by this tree's lib
    train(make_config("smoke", epochs=2, data_dir=str(smoke_root), out=str(straight), **TINY))
    (tmp_path / "lib").mkdir()
    content = tmp_path / "content"
    content.mkdir()
    os.chdir(content)
    kernel_path(monkeypatch)
    runtime_lib()  # training above imported lib modules again: the runtime imports its clone's
    url = bare_repository(tmp_path)
    settings = dict(profile="smoke", epochs=2, data_dir=str(smoke_root), **TINY)
    clone, drive, cloud = content / nb.CLONE_NAME, content / "drive" / nb.DRIVE_FOLDER, tmp_path / "cloud"

    assert run_notebook(shell, "03_training", url, {**settings, "stop_after_epochs": 1}) is None
    out = capsys.readouterr()
    assert subprocess.run(["git", "-C", str(clone), "remote", "get-url", "origin"], capture_output=True,
                          text=True).stdout.strip() == url
    assert sys.modules["lib.colab.notebook"].current().root == clone  # lib, and the root it works from: the clone's
    assert "installing" not in out.out  # everything requirements.txt lists is there: nothing installed
    assert (clone / "runs").is_symlink() and (clone / "runs").resolve() == (drive / "runs").resolve()
    assert colab.calls[-1] == ("flush_and_unmount",)  # the end of training pushed everything to Drive
    [run_dir] = (cloud / nb.DRIVE_FOLDER / "runs").iterdir()
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    assert [r["epoch"] for r in history_rows(run_dir)] == ["1"]

    os.chdir(content)  # a new runtime starts in its working folder, without the clone; Drive stays
    shutil.rmtree(clone)
    runtime_lib()
    Shell.clear_instance()
    second = Shell.instance(config=shell.config)
    assert run_notebook(second, "03_training", url, settings) is None
    out = capsys.readouterr()
    assert "continues the run there" in out.out and "continuing from Google Drive" in out.out
    assert "resuming" in out.err and "at epoch 2/2" in out.err
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    seconds = "epoch_seconds"
    assert [{k: v for k, v in r.items() if k != seconds} for r in history_rows(run_dir)] == \
        [{k: v for k, v in r.items() if k != seconds} for r in history_rows(straight)]


# --------------------------------------------------------------------------------------------------------------
# Google Drive: copies in place, never a replaced or deleted file
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def checkout(tmp_path) -> Path:
    """What setup() needs of a checkout: the marker and requirements.txt (lib itself is this process's)."""
    root = tmp_path / "content" / nb.CLONE_NAME
    (root / nb.MARKER).parent.mkdir(parents=True)
    shutil.copy2(REPO / nb.MARKER, root / nb.MARKER)
    shutil.copy2(REPO / "requirements.txt", root / "requirements.txt")
    return root


def test_drive_holds_only_the_run_files_over_a_five_epoch_run(colab, checkout, smoke_root, monkeypatch, capsys):
    """Every file the Drive folder ever held is one of the four, each the same file throughout (one inode: written
    in place), and no file there was ever renamed over or deleted, so nothing went to Drive's trash; lib.train's
    own folder had last.pt renamed over every epoch (what a run folder on Drive would have sent to the trash). A
    copy that fails (a full Drive) is one warning; training goes on and the next copy catches up."""
    monkeypatch.chdir(checkout)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(nb, "_session", None)
    nb.setup("runs", root=checkout)
    remote = checkout.parent / "drive" / nb.DRIVE_FOLDER / "runs" / "tiny"
    local = checkout / nbruns.LOCAL_RUNS / "runs" / "tiny"
    held, inodes, writes, replaced, removed = set(), defaultdict(set), [], [], []
    copy, real_open, real_replace, real_rename, real_unlink = (lib.colab.drive.copy_in_place, open, os.replace,
                                                               os.rename, os.unlink)

    def watched(src, dst):
        ok = copy(src, dst)
        for p in remote.iterdir():  # what Drive holds after every single copy
            held.add(p.name)
            inodes[p.name].add(p.stat().st_ino)
        return ok

    def full_once(path, mode="r", *args, **kwargs):  # the 6th write into Drive fails, as on a full Drive
        if "w" in mode and str(remote) in str(path):
            writes.append(path)
            if len(writes) == 6:
                raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(lib.colab.drive, "copy_in_place", watched)
    monkeypatch.setattr("builtins.open", full_once)
    monkeypatch.setattr(os, "replace", lambda a, b, **kw: (replaced.append(str(b)), real_replace(a, b, **kw))[1])
    monkeypatch.setattr(os, "rename", lambda a, b, **kw: (replaced.append(str(b)), real_rename(a, b, **kw))[1])
    monkeypatch.setattr(os, "unlink", lambda p, **kw: (removed.append(str(p)), real_unlink(p, **kw))[1])
    summary = nbruns.train(make_config("smoke", epochs=5, data_dir=str(smoke_root), out="runs/tiny", **TINY))
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(os, "rename", real_rename)
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert summary["epochs_done"] == 5 and Path(summary["run_dir"]) == local and summary["kept_in"] == str(remote)
    assert held == RUN_FILES and all(len(v) == 1 for v in inodes.values()), inodes
    assert not [p for p in replaced + removed if str(remote) in p]  # never replaced, never deleted on Drive
    assert replaced.count(str(local / "last.pt")) == 5  # lib.train: a new last.pt every epoch
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    kept = colab.cloud / nb.DRIVE_FOLDER / "runs" / "tiny"  # flushed and unmounted: on Google's side now
    assert {p.name for p in kept.iterdir()} == RUN_FILES
    assert (kept / "last.pt").read_bytes() == (local / "last.pt").read_bytes()
    assert history_rows(kept) == history_rows(local) and len(history_rows(kept)) == 5


def test_kept_files_are_copied_to_drive_after_each_cell_and_back_into_a_new_runtime(colab, checkout, monkeypatch,
                                                                                   capsys):
    monkeypatch.chdir(checkout)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(nb, "_session", None)
    (checkout / "report").mkdir()
    (checkout / "report" / "report.md").write_text("the committed write-up\n")
    nb.setup("runs", "report", "data/cifar_test_nolabel.pkl", root=checkout)
    drive = checkout.parent / "drive" / nb.DRIVE_FOLDER
    assert "Google Drive:" in capsys.readouterr().out
    (checkout / "report" / "table1.md").write_text("a table\n")
    nb.current().drive.sync(checkout)  # what setup's post_run_cell hook does after every cell
    assert sorted(p.name for p in (drive / "report").iterdir()) == ["table1.md"]  # unchanged files stay local
    (drive / "data").mkdir()
    (drive / "data" / "cifar_test_nolabel.pkl").write_bytes(b"kaggle")
    shutil.rmtree(checkout / "report")
    nb.setup("runs", "report", "data/cifar_test_nolabel.pkl", root=checkout)  # a new runtime: brought back
    assert (checkout / "data" / "cifar_test_nolabel.pkl").read_bytes() == b"kaggle"
    assert (checkout / "report" / "table1.md").read_text() == "a table\n"


def test_notebooks_without_runs_do_not_ask_for_drive(colab, checkout, monkeypatch):
    monkeypatch.chdir(checkout)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(nb, "_session", None)
    nb.setup(root=checkout)
    assert colab.calls == [] and not (checkout / "runs").exists() and nb.current().colab
    assert nb.current().drive is None


# --------------------------------------------------------------------------------------------------------------
# Parameters: every name checked, comma lists
# --------------------------------------------------------------------------------------------------------------
PARAMETERS = 'epochs = None\ndropout = None\nwidths: list[int] = None\nruns: list = None\n'


def test_an_unknown_parameter_stops_in_one_line_before_anything_runs(shell, capsys):
    run(shell, "import lib.colab.notebook as nb; nb.setup(root=%r)" % str(REPO))
    run(shell, PARAMETERS)
    result = run(shell, "# Parameters\nepochs = 5\ndropuot = 0.2\nran = True\n")
    assert not result.success and "ran" not in shell.user_ns and shell.user_ns["epochs"] is None
    line = one_line(capsys.readouterr().out)
    assert line.startswith("UserError: papermill -p dropuot:") and "did you mean dropout?" in line


def test_list_parameters_take_comma_strings(shell):
    run(shell, "import lib.colab.notebook as nb; nb.setup(root=%r)" % str(REPO))
    run(shell, PARAMETERS)
    assert run(shell, '# Parameters\nwidths = "45,90,170,340"\nruns = "runs/a,runs/b"\nepochs = 5\n').success
    assert shell.user_ns["widths"] == [45, 90, 170, 340] and shell.user_ns["runs"] == ["runs/a", "runs/b"]
    assert run(shell, '# Parameters\nruns = ["runs/x"]\n').success and shell.user_ns["runs"] == ["runs/x"]


def test_comma_list():
    assert nb.comma_list("runs/a") == ["runs/a"]
    assert nb.comma_list("dropout=0.0,0.1,lr=0.05,0.1") == ["dropout=0.0,0.1", "lr=0.05,0.1"]  # 07's params
    with pytest.raises(UserError, match="expected ints"):
        nb.comma_list("45,wide", "list[int]")


def parameters_cell(name: str) -> str:
    return next(c.source for c in nbformat.read(REPO / f"notebooks/{name}.ipynb", as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))


def test_every_run_config_setting_can_be_passed_to_03(shell, capsys):
    """03's parameters cell holds the knobs; papermill -p takes every RunConfig setting besides (checked, comma
    lists for widths), and a misspelt one stops in one line naming the closest settings."""
    from dataclasses import fields

    from lib.config import RunConfig

    cell = parameters_cell("03_training")
    names = nb.parameter_names(cell)
    assert len(names) <= 17 and set(names) <= {f.name for f in fields(RunConfig)} | {"runs_dir", "run_name"}
    run(shell, "import os, lib.colab.notebook as nb; nb.setup(root=%r, run_settings=True)" % str(REPO))
    run(shell, cell)
    injected = {f.name: getattr(RunConfig, f.name, None) for f in fields(RunConfig) if f.name not in names}
    assert len(injected) >= 40  # most settings are not in the cell
    assert run(shell, "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in injected.items())).success
    run(shell, cell)  # papermill's injected cell follows the parameters cell
    assert run(shell, '# Parameters\nwidths = "8,16,32,64"\nlr = 0.05\n').success
    assert shell.user_ns["widths"] == [8, 16, 32, 64] and shell.user_ns["lr"] == 0.05
    run(shell, cell)
    assert not run(shell, "# Parameters\nlabel_smoothng = 0.2\n").success
    line = one_line(capsys.readouterr().out)
    assert line.startswith("UserError: papermill -p label_smoothng:") and "did you mean label_smoothing?" in line


def test_without_run_settings_a_setting_outside_the_cell_is_unknown(shell, capsys):
    run(shell, "import os, lib.colab.notebook as nb; nb.setup(root=%r)" % str(REPO))
    run(shell, parameters_cell("04_results"))
    assert not run(shell, "# Parameters\nlr = 0.05\n").success
    assert "this notebook has no parameter lr" in one_line(capsys.readouterr().out)


# --------------------------------------------------------------------------------------------------------------
# One-line errors in the notebook's words
# --------------------------------------------------------------------------------------------------------------
def test_a_user_error_is_one_line_other_errors_keep_their_traceback(shell, capsys):
    run(shell, "import lib.colab.notebook as nb; nb.setup(root=%r)" % str(REPO))
    assert not run(shell, "from lib.config import make_config\nmake_config('smoke', epochs=0)").success
    assert one_line(capsys.readouterr().out) == "UserError: epochs = 0: must be >= 1"
    assert not run(shell, "1 / 0").success
    text = capsys.readouterr().out
    assert "ZeroDivisionError" in text and "Traceback" in text and len(text.splitlines()) > 3


def test_colabs_own_error_handler_keeps_its_exceptions(shell, capsys):
    """Colab handles ImportError with IPython's custom exception handler too (google.colab._shell_customizations):
    setup adds UserError to it instead of replacing it."""
    seen = []
    shell.set_custom_exc((ImportError,), lambda shell, etype, value, tb, tb_offset=None: seen.append(etype))
    run(shell, "import lib.colab.notebook as nb; nb.setup(root=%r)" % str(REPO))
    run(shell, "import no_such_module_here")
    assert seen == [ModuleNotFoundError]
    run(shell, "from lib.config import make_config\nmake_config('smoke', epochs=0)")
    assert one_line(capsys.readouterr().out) == "UserError: epochs = 0: must be >= 1" and len(seen) == 1


def test_messages_use_the_notebooks_words(tmp_path):
    from lib.checkpoint import open_run as _open_run

    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(UserError) as exc:
        cfg = make_config("smoke", out=str(tmp_path))
        _open_run(cfg, cfg.validate(), tmp_path)
    assert "--resume" in str(exc.value)  # the CLI's words
    assert "set resume = True to continue it or choose another run_name" in nb.notebook_words(str(exc.value))
    assert nb.notebook_words("--no-amp is slower; --device 'gpu': expected") == \
        "amp = False is slower; device = 'gpu': expected"
    assert nb.notebook_words("--epochs 300 -> 5") == "epochs 300 -> 5"


# --------------------------------------------------------------------------------------------------------------
# Notebook 03: resume = "auto", run names, a CPU runtime
# --------------------------------------------------------------------------------------------------------------
def test_resume_auto(tmp_path, smoke_root, monkeypatch):
    monkeypatch.setattr(nb, "_session", None)
    out = tmp_path / "run"
    cfg = make_config("smoke", epochs=2, data_dir=str(smoke_root), out=str(out), **TINY)
    assert nbruns.resume_setting("auto", cfg) is False  # nothing there: a new run
    train(make_config("smoke", epochs=2, stop_after_epochs=1, data_dir=str(smoke_root), out=str(out), **TINY))
    assert nbruns.resume_setting("auto", cfg) is True  # the same settings: continue
    before = (out / "last.pt").read_bytes()
    other = make_config("smoke", epochs=2, lr=0.05, data_dir=str(smoke_root), out=str(out), **TINY)
    with pytest.raises(UserError) as exc:
        nbruns.resume_setting("auto", other)
    message = str(exc.value)
    assert "already holds another run" in message and "lr 0.1 -> 0.05" in message and "--" not in message
    assert (out / "last.pt").read_bytes() == before  # left as it is
    assert nbruns.resume_setting(False, cfg) is False and nbruns.resume_setting(True, other) is True
    with pytest.raises(UserError, match="expected"):
        nbruns.resume_setting("yes", cfg)


def test_run_config_names_one_folder_per_setting(monkeypatch):
    monkeypatch.setattr(nb, "_session", None)
    monkeypatch.delenv("CIFAR_PROFILE", raising=False)
    base = dict(profile="smoke", model="light_resnet18", runs_dir="somewhere", resume=False)
    cfg = nbruns.run_config({**base, "epochs": 1, "dropout": 0.2, "widths": [8, 16, 32, 64]})
    assert cfg.out == str(Path("somewhere", "light_resnet18_smoke_dropout0.2_widths8-16-32-64_epochs1"))
    assert cfg.progress is True and cfg.resume is False
    # how much of the schedule runs now, and where, are no new run
    again = nbruns.run_config({**base, "epochs": 1, "dropout": 0.2, "widths": [8, 16, 32, 64], "stop_after_epochs": 1,
                           "device": "cpu", "time_limit": 5.0})
    assert again.out == cfg.out
    assert nbruns.run_config({**base, "run_name": "mine"}).out == str(Path("somewhere", "mine"))
    with pytest.raises(UserError, match="epochs"):
        nbruns.run_config({**base, "epochs": 0})


def test_the_paper_profile_on_a_cpu_colab_runtime_stops_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    colab = nb.Session(REPO, colab=True)
    with pytest.raises(UserError, match="Runtime > Change runtime type"):
        nbruns.check_runtime(make_config("paper"), colab)
    nbruns.check_runtime(make_config("paper", device="cpu"), colab)  # asked for
    nbruns.check_runtime(make_config("smoke"), colab)
    nbruns.check_runtime(make_config("paper"), nb.Session(REPO))  # not Colab


def test_progress_bars_in_colabs_shell(monkeypatch):
    """Colab's shell is a subclass of ipykernel's ZMQInteractiveShell (google.colab._shell.Shell)."""
    from ipykernel.zmqshell import ZMQInteractiveShell

    class ColabShell(ZMQInteractiveShell):
        pass

    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: object.__new__(ColabShell))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert _show_progress(make_config("smoke"))
    assert not _show_progress(make_config("smoke", progress=False))
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert not _show_progress(make_config("smoke"))


# --------------------------------------------------------------------------------------------------------------
# Requirements on Colab: only what is missing, never an upgrade
# --------------------------------------------------------------------------------------------------------------
def test_missing_requirements_never_upgrade(monkeypatch):
    from importlib.metadata import PackageNotFoundError

    installed = {"torch": "2.11.0", "numpy": "1.23.5"}

    def version(name):
        if name not in installed:
            raise PackageNotFoundError(name)
        return installed[name]

    missing, notes = nb.missing_requirements(["torch>=2.2,<3", "numpy>=1.24  # a comment", "seaborn>=0.13", "",
                                              "-r other.txt"], version)
    assert missing == ["seaborn>=0.13"]
    assert notes == ["note: this runtime has numpy 1.23.5, requirements.txt asks for >=1.24"]
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(nb, "missing_requirements", lambda lines: (["ray[tune]>=2.41"] if any(
        line.startswith("ray") for line in lines) else [], []))
    assert nb.install_missing(REPO, extras=["ray"]) == ["ray[tune]>=2.41"]
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "ray[tune]>=2.41"]]


# --------------------------------------------------------------------------------------------------------------
# Colab badges and make colab-links
# --------------------------------------------------------------------------------------------------------------
def test_readme_and_every_title_cell_carry_the_colab_badge():
    readme = (REPO / "README.md").read_text()
    for path in NOTEBOOKS:
        link = f"https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/{path.name}"
        title = nbformat.read(path, as_version=4).cells[0]
        assert title.cell_type == "markdown" and f"({link})" in title.source and "colab-badge.svg" in title.source
        assert f"({link})" in readme, path.name


def test_make_colab_links_fills_the_badges_and_the_clone_url(tmp_path):
    for name in ("Makefile", "README.md"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    subprocess.run(["make", "-s", "colab-links", "REPO=alice/cifar-resnets"], cwd=tmp_path, check=True,
                   capture_output=True)
    for path in (tmp_path / "README.md", *(tmp_path / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert "github/OWNER/REPO/" not in text and PLACEHOLDER not in text, path.name
    assert "github/alice/cifar-resnets/blob/main/notebooks/03_training.ipynb" in (tmp_path / "README.md").read_text()
    for path in (tmp_path / "notebooks").glob("*.ipynb"):
        cells = nbformat.read(path, as_version=4).cells
        assert "https://colab.research.google.com/github/alice/cifar-resnets/blob/main/notebooks/" in cells[0].source
        assert 'CLONE = "git clone -q --depth=1 https://github.com/alice/cifar-resnets.git cifar10"' in first_cell(path)
        nbformat.validate(nbformat.read(path, as_version=4))
        ast.parse(first_cell(path))


# --------------------------------------------------------------------------------------------------------------
# Notebooks 04-06: which runs and which checkpoint (without training: the smoke run is there)
# --------------------------------------------------------------------------------------------------------------
def test_the_runs_and_the_checkpoint_notebooks_04_to_06_take(tmp_path, capsys):
    from test_report import FULL, fake_run

    runs = tmp_path / "runs"
    fake_run(runs / "r64_old", "robust_resnet64", [0.5, 0.6], written=1000)
    fake_run(runs / "r64_new", "robust_resnet64", [0.3], written=2000)  # the newest, and the worst
    fake_run(runs / "lr18_full", "light_resnet18", FULL + [0.55])  # all 300 epochs: a reproduction
    fake_run(runs / "lr18_smoke_like", "light_resnet18", [0.9], profile="smoke", data_source="synthetic")
    for run in runs.iterdir():
        (run / "best.pt").write_bytes(b"")
    # 04: the newest paper-profile run of each model, never the best; or what it is given
    assert sorted(p.name for p in nbruns.report_runs("paper", "robust_resnet64", None, runs)) == ["lr18_full", "r64_new"]
    assert nbruns.report_runs("paper", "robust_resnet64", ["runs/a", "runs/b"]) == [Path("runs/a"), Path("runs/b")]
    smoke = runs / "light_resnet18_smoke"
    smoke.mkdir()
    (smoke / "best.pt").write_bytes(b"")
    assert nbruns.report_runs("smoke", "light_resnet18", None, runs) == [smoke]  # there: not trained again
    assert "no smoke run" not in capsys.readouterr().out
    assert nbruns.output_dirs("smoke") == ("scratch/smoke/figures", "scratch/smoke/report")
    assert nbruns.output_dirs("paper") == ("figures", "report") and nbruns.output_dirs("paper", "f", "r") == ("f", "r")
    # 05 and 06: a real run first (lr18_full: 0.55 at best, below r64_old), else the best validation accuracy
    assert nbruns.best_checkpoint("paper", "robust_resnet64", runs) == runs / "lr18_full" / "best.pt"
    shutil.rmtree(runs / "lr18_full")
    assert nbruns.best_checkpoint("paper", "robust_resnet64", runs) == runs / "r64_old" / "best.pt"
    assert nbruns.best_checkpoint("smoke", "light_resnet18", runs) == smoke / "best.pt"
    assert nbruns.best_checkpoint("paper", "x", runs, run_name="r64_new") == runs / "r64_new" / "best.pt"
    assert nbruns.best_checkpoint("paper", "x", runs, "r64_new", checkpoint="my.pt") == Path("my.pt")
    with pytest.raises(UserError, match="no paper-profile run with a best.pt"):
        nbruns.best_checkpoint("paper", "robust_resnet64", tmp_path / "empty")
