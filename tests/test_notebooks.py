"""The notebooks: committed without outputs, thin over lib/, and executed on the smoke profile.

Every execution (nbval over all five, the papermill chain 01-05, 04 and 05 alone, 03 with overrides) runs in its
own scratch copy of what a fresh clone holds (lib/, notebooks/, requirements.txt), so smoke data, run folders,
figures, tables and submission.csv land in tmp, never in the working tree, and pytest -n workers share nothing.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from lib.config import RunConfig
from lib.data import load_kaggle_test

REPO = Path(__file__).resolve().parent.parent
CHAIN = ["01_data_exploration", "02_architectures", "03_training", "04_results", "05_kaggle_submission"]
NOTEBOOKS = [*CHAIN, "07_sweep"]  # 07 (the hyper-parameter study, lib.sweep on Ray) stands outside the chain
# The notebooks default to the report's RobustResNet64; a smoke epoch of it takes minutes on 2 CPU cores, so the
# executions here pick LightResNet18 -- through the notebooks' own parameter (papermill -p, or CIFAR_MODEL for
# nbval, which cannot inject parameters), never by changing a default.
CI_MODEL = "light_resnet18"
SMOKE_RUN = f"runs/{CI_MODEL}_smoke"  # the run folder 03 names for the smoke profile; 04 and 05 look for it
TIMEOUT = 900  # seconds per subprocess: generous for a loaded 2-core CI machine
# what notebook 03 must expose, named like the `python -m lib.train` options
TRAINING_PARAMETERS = {"model", "profile", "epochs", "dropout", "base_channels", "blocks_per_group", "kernel_size",
                       "batch_size", "lr", "warmup_epochs", "label_smoothing", "mix_prob", "augment", "seed",
                       "data_dir", "run_name", "resume"}
# values a parameters cell may read from the environment (nbval cannot inject parameters)
FROM_ENVIRONMENT = {"profile": ("CIFAR_PROFILE", "paper"), "model": ("CIFAR_MODEL", "robust_resnet64")}

notebooks_run = pytest.mark.notebooks


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def cell(nb, cell_id: str) -> str:
    return next(c.source for c in nb.cells if c.get("id") == cell_id)


def parameters(nb) -> dict[str, ast.expr]:
    tagged = [c for c in code_cells(nb) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters` (papermill injects after it)"
    values = {}
    for stmt in ast.parse(tagged[0].source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, ast.unparse(stmt)
        values[stmt.targets[0].id] = stmt.value
    return values


# --------------------------------------------------------------------------------------------------------------
# The committed files (fast)
# --------------------------------------------------------------------------------------------------------------
def test_the_five_notebooks_are_there():
    assert sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    """Our `nbstripout --verify`: no outputs, execution counts or execution metadata, so diffs stay readable."""
    nb = read(name)
    nbformat.validate(nb)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, f"{name}: notebook metadata {sorted(nb.metadata)}"
    assert nb.metadata.kernelspec.name == "python3"
    for c in code_cells(nb):
        assert c.outputs == [] and c.execution_count is None, f"{name}: cell {c.id} has outputs; clear them"
        assert set(c.metadata) <= {"tags"}, f"{name}: cell {c.id} metadata {sorted(c.metadata)}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_are_plain_literals(name):
    """papermill's convention: one `parameters` cell of literals; only the profile and model may come from the
    environment (so nbval, which cannot inject parameters, runs the smoke profile)."""
    for key, value in parameters(read(name)).items():
        if key in FROM_ENVIRONMENT:
            env, default = FROM_ENVIRONMENT[key]
            assert ast.unparse(value) == f"os.environ.get({env!r}, {default!r})", f"{name}: {key}"
        else:
            ast.literal_eval(value)  # raises on anything but a literal


def test_training_parameters_are_named_like_the_cli():
    params = parameters(read("03_training"))
    assert TRAINING_PARAMETERS <= set(params)
    run_config = {f.name for f in fields(RunConfig)}
    assert set(params) - {"run_name", "runs_dir"} <= run_config, "03's parameters must be RunConfig settings"
    # None = the profile's value; the model default is the report's best
    assert all(ast.literal_eval(params[k]) is None for k in TRAINING_PARAMETERS - {"model", "profile"})


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_thin(name):
    """Narrative over lib/: no model, augmentation or training code defined in a notebook."""
    for c in code_cells(read(name)):
        tree = ast.parse(TransformerManager().transform_cell(c.source))  # %magics -> Python
        for node in ast.walk(tree):
            assert not isinstance(node, ast.ClassDef), f"{name}: class {node.name} belongs in lib/"
            if isinstance(node, ast.Attribute):
                assert node.attr not in {"backward", "zero_grad", "Conv2d", "Linear"}, f"{name}: {node.attr}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert not (module or "").startswith(("torch.nn", "torch.optim", "torchvision")), f"{name}: {module}"


def test_first_cell_does_nothing_outside_colab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in NOTEBOOKS:
        namespace = {}
        exec(cell(read(name), "colab"), namespace)
        assert "REPO_URL" in namespace and namespace["USE_DRIVE"] is False
        assert Path.cwd() == tmp_path and list(tmp_path.iterdir()) == []


def test_setup_cell_finds_the_repository_root(monkeypatch):
    """Jupyter starts kernels in notebooks/, papermill wherever it was called: both end up at the root."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    for start in (REPO / "notebooks", REPO / "lib"):
        monkeypatch.chdir(start)
        namespace = {}
        exec(cell(read("03_training"), "setup"), namespace)
        assert namespace["ROOT"] == REPO and Path.cwd() == REPO and str(REPO) in sys.path


# --------------------------------------------------------------------------------------------------------------
# Executions on the smoke profile (slow: deselect with -m "not notebooks")
# --------------------------------------------------------------------------------------------------------------
def fresh_clone(dest: Path) -> Path:
    """What a fresh clone needs to run the notebooks, without data/, runs/ or caches."""
    for name in ("lib", "notebooks"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copy2(REPO / "requirements.txt", dest / "requirements.txt")
    return dest


def smoke_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIFAR_", "PYTEST_"))}
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in env:  # pytest -n N: share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return {**env, "CIFAR_PROFILE": "smoke", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def papermill(clone: Path, name: str, out_dir: Path, env: dict[str, str], **params) -> nbformat.NotebookNode:
    """`papermill notebooks/NAME.ipynb OUT -k python3 -p KEY VALUE ...`, as a user types it, from the clone's root."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.ipynb"
    cmd = [sys.executable, "-m", "papermill", f"notebooks/{name}.ipynb", str(out), "-k", "python3", "--no-progress-bar"]
    for key, value in params.items():
        cmd += ["-p", key, str(value)]
    proc = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"papermill {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return nbformat.read(out, as_version=4)


def stream_text(nb) -> str:
    return "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs if o.output_type == "stream")


def check_smoke_outputs(clone: Path, submission: Path) -> None:
    """What the smoke chain leaves behind: the run folder, Figure 1, Table 1 and a well-formed submission."""
    config = json.loads((clone / SMOKE_RUN / "config.json").read_text())
    assert config["profile"] == "smoke" and config["model"] == CI_MODEL and config["data_source"] == "synthetic"
    for path in ("figures/figure1.png", "figures/figure1.pdf", "report/table1.md", "report/table1.tex"):
        assert (clone / path).stat().st_size > 0, path
    table = (clone / "report/table1.md").read_text()
    assert "NOT a reproduction" in table and "no real run yet" in table  # a smoke number is never a result
    _, ids = load_kaggle_test(clone / "data/smoke/kaggle_test.pkl")
    with open(submission, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "Labels"]
    assert [int(r[0]) for r in rows[1:]] == ids.tolist()  # the pickle's id order
    assert all(0 <= int(r[1]) <= 9 for r in rows[1:])


@notebooks_run
def test_nbval_over_the_notebooks(tmp_path):
    """`pytest --nbval-lax notebooks/` with CIFAR_PROFILE=smoke: every cell of 01-05 and 07 runs without error."""
    clone = fresh_clone(tmp_path / "clone")
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=600",
           "-p", "no:cacheprovider", "-o", "addopts=", "-q", "notebooks"]
    proc = subprocess.run(cmd, cwd=clone, env=smoke_env(CIFAR_MODEL=CI_MODEL), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, f"nbval failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    check_smoke_outputs(clone, clone / "submission.csv")


@notebooks_run
def test_papermill_chain(tmp_path):
    """01 -> 05 with papermill on the smoke profile: 03 trains, 04 reports on that run, 05 predicts with it."""
    clone, out = fresh_clone(tmp_path / "clone"), tmp_path / "executed"
    env = smoke_env()
    for name in CHAIN:
        params = {"model": CI_MODEL} if name in ("03_training", "04_results", "05_kaggle_submission") else {}
        if name == "05_kaggle_submission":
            params["submission_file"] = tmp_path / "submission.csv"
        nb = papermill(clone, name, out, env, **params)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells) or not params
        if name == "03_training":
            text = stream_text(nb)
            assert "epoch   2/2" in text
            assert "\r" not in text and "it/s" not in text  # headless: no progress bars in the output
        if name == "05_kaggle_submission":
            assert "not submitting" in stream_text(nb)  # a smoke submission is never uploaded
    check_smoke_outputs(clone, tmp_path / "submission.csv")
    # executed copies went to tmp: notebooks/ still holds exactly the five clean notebooks
    assert sorted(p.name for p in (clone / "notebooks").iterdir()) == [f"{n}.ipynb" for n in NOTEBOOKS]


@notebooks_run
@pytest.mark.parametrize("name", ["04_results", "05_kaggle_submission"])
def test_results_and_submission_run_alone(tmp_path, name):
    """From a fresh clone with no run folder, 04 and 05 train the smoke run they need themselves."""
    clone = fresh_clone(tmp_path / "clone")
    nb = papermill(clone, name, tmp_path / "executed", smoke_env(), model=CI_MODEL)
    assert "no smoke run in" in stream_text(nb)
    assert (clone / SMOKE_RUN / "best.pt").is_file()
    if name == "04_results":
        assert (clone / "figures/figure1.png").is_file() and (clone / "report/table1.md").is_file()
    else:
        assert (clone / "submission.csv").is_file()


@notebooks_run
def test_papermill_overrides_reach_the_run(tmp_path):
    """`papermill 03_training.ipynb out.ipynb -p epochs 1 -p dropout 0.2`: the run's config.json shows both."""
    clone = fresh_clone(tmp_path / "clone")
    papermill(clone, "03_training", tmp_path, smoke_env(), epochs=1, dropout=0.2, model=CI_MODEL)
    run = clone / "runs" / f"{CI_MODEL}_smoke_epochs1_dropout0.2"  # one folder per setting
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 1 and config["dropout"] == 0.2 and config["profile"] == "smoke"
    assert config["model_config"]["dropout"] == 0.2  # reached the model, not just the record
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1"]
