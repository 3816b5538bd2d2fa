"""The notebooks: committed without outputs, thin over lib/, and executed on the smoke profile.

Each notebook is executed once per test session, by papermill (as `make smoke` and a user's `papermill -p ...` run
them), in CHAIN order in one scratch copy of what a fresh clone holds (lib/, notebooks/, report/reference/,
requirements.txt), so smoke data, run folders, figures, tables and submission.csv land in tmp, never in the working
tree. The checks per notebook read what that one execution left (the executed notebooks and the clone's files).
"""
from __future__ import annotations

import ast
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import nbformat
import numpy as np
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from lib.config import RunConfig
from lib.data import load_kaggle_test

REPO = Path(__file__).resolve().parent.parent
# The notebooks, in the order the chain executes them (a new notebook: add it here, its -p values to CHAIN_PARAMS)
CHAIN = ["01_data_exploration", "02_architectures", "03_training", "04_results", "05_kaggle_submission",
         "06_analysis", "07_sweep"]
# The notebooks default to the report's RobustResNet64; a smoke epoch of it takes minutes on 2 CPU cores, so the
# executions here pick LightResNet18 -- through the notebooks' own parameter, never by changing a default.
CI_MODEL = "light_resnet18"
SMOKE_RUN = f"runs/{CI_MODEL}_smoke"  # the run folder 03 names for the smoke profile; 04 and 05 look for it
# 03 runs with overrides, so its run gets a folder of its own (one per setting) and the overrides can be checked
# in it; 04 then finds no SMOKE_RUN and trains it itself, as on a fresh Colab runtime; 05 predicts with that run.
OVERRIDE_RUN = f"runs/{CI_MODEL}_smoke_dropout0.2_epochs1_lr0.05"
# 03 runs as its header says (on a fresh clone), with the chain's own -p after the header's; lr is a RunConfig
# setting its parameters cell does not list
CHAIN_PARAMS = {"03_training": {"model": CI_MODEL, "epochs": 1, "lr": 0.05},
                "04_results": {"model": CI_MODEL},
                "05_kaggle_submission": {"model": CI_MODEL},
                "06_analysis": {"model": CI_MODEL},
                "07_sweep": {"model": CI_MODEL}}
TYPO = "02_with_a_typo"  # 02 executed with -p batch_sise 4 (its parameter is batch_size)
TYPO_03 = "03_with_a_typo"  # 03 executed with -p label_smoothng 0.2 (a RunConfig setting: label_smoothing)
SMOKE_OUT = "scratch/smoke"  # where 04 and 05 put a smoke report and submission (never figures/ or report/)
TIMEOUT = 900  # seconds per subprocess: generous for a loaded 2-core CI machine
# what notebook 03's parameters add to the RunConfig settings (named as in `python -m lib.train`)
NOTEBOOK_03_ONLY = {"runs_dir", "run_name"}
# values a parameters cell may read from the environment (for tools that cannot inject parameters)
FROM_ENVIRONMENT = {"profile": ("CIFAR_PROFILE", "paper"), "model": ("CIFAR_MODEL", "robust_resnet64")}

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
        if isinstance(stmt, ast.AnnAssign):  # `widths: list[int] = None`: a list, also as a comma string
            assert ast.unparse(stmt.annotation).startswith("list"), ast.unparse(stmt)
            values[stmt.target.id] = stmt.value
            continue
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, ast.unparse(stmt)
        values[stmt.targets[0].id] = stmt.value
    return values


# --------------------------------------------------------------------------------------------------------------
# The committed files (fast)
# --------------------------------------------------------------------------------------------------------------
def test_chain_lists_every_notebook():
    assert sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb")) == CHAIN


@pytest.mark.parametrize("name", CHAIN)
def test_committed_without_outputs(name):
    """Our `nbstripout --verify`: no outputs, execution counts or execution metadata, so diffs stay readable."""
    nb = read(name)
    nbformat.validate(nb)
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, f"{name}: notebook metadata {sorted(nb.metadata)}"
    assert nb.metadata.kernelspec.name == "python3"
    for c in code_cells(nb):
        assert c.outputs == [] and c.execution_count is None, f"{name}: cell {c.id} has outputs; clear them"
        assert set(c.metadata) <= {"tags"}, f"{name}: cell {c.id} metadata {sorted(c.metadata)}"


@pytest.mark.parametrize("name", CHAIN)
def test_parameters_are_plain_literals(name):
    """papermill's convention: one `parameters` cell of literals; only the profile and model may come from the
    environment (so nbval, which cannot inject parameters, runs the smoke profile)."""
    for key, value in parameters(read(name)).items():
        if key in FROM_ENVIRONMENT:
            env, default = FROM_ENVIRONMENT[key]
            assert ast.unparse(value) == f"os.environ.get({env!r}, {default!r})", f"{name}: {key}"
        else:
            ast.literal_eval(value)  # raises on anything but a literal


def test_training_parameters_are_the_knobs_and_run_config_settings():
    """03's parameters cell holds the knobs a student turns (about 15), each a RunConfig setting or where the run
    folder goes, None by default (the profile's value) but for the profile and model (from the environment),
    download, resume ("auto") and runs_dir; every other setting is a papermill -p away (test_notebook_setup.py and
    the chain's -p lr)."""
    params = parameters(read("03_training"))
    assert len(params) <= 17
    assert set(params) <= {f.name for f in fields(RunConfig)} | NOTEBOOK_03_ONLY
    assert {"profile", "model", "epochs", "dropout", "blocks_per_group", "base_channels", "run_name", "resume",
            "stop_after_epochs", "time_limit"} <= set(params)
    defaults = {k: ast.literal_eval(v) for k, v in params.items() if k not in FROM_ENVIRONMENT}
    assert defaults.pop("download") is True and defaults.pop("resume") == "auto" and defaults.pop("runs_dir") == "runs"
    assert set(defaults.values()) == {None}


@pytest.mark.parametrize("name", CHAIN)
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


def kaggle_cell_namespace(tmp_path: Path, **extra) -> dict:
    """What 05's upload cell reads from the cells before it, for a checkpoint trained on CIFAR-10."""
    import shlex
    import shutil
    import subprocess

    from lib.common import UserError

    return {"shlex": shlex, "shutil": shutil, "subprocess": subprocess, "Path": Path, "UserError": UserError,
            "ckpt": {"model_config": {"name": "robust_resnet64"}, "epoch": 300}, "checkpoint": "runs/r64/best.pt",
            "tta": True, "competition": "some-competition", "submission_file": tmp_path / "submission.csv",
            "message": None, "data": {"source": "cifar10"}, "submit": True, **extra}


def fake_kaggle(tmp_path: Path, monkeypatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kaggle").write_text("#!/bin/sh\n" + script)
    (bin_dir / "kaggle").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_kaggle_upload_shows_the_clis_own_answer(tmp_path, monkeypatch, capsys):
    """05 leaves the login to the kaggle CLI (whatever form it accepts) and shows what it says; a refusal is one
    line with its exit code, the CLI's message above it."""
    from lib.common import UserError

    upload = code_cells(read("05_kaggle_submission"))[-1].source
    fake_kaggle(tmp_path, monkeypatch, 'echo "$@"; echo "401 - Unauthorized" >&2; exit 1\n')
    with pytest.raises(UserError, match="exit code 1"):
        exec(upload, kaggle_cell_namespace(tmp_path))
    out = capsys.readouterr().out
    assert "401 - Unauthorized" in out and "competitions submit -c some-competition" in out
    (tmp_path / "bin" / "kaggle").write_text('#!/bin/sh\necho "Successfully submitted to some-competition"\n')
    exec(upload, kaggle_cell_namespace(tmp_path))
    assert "Successfully submitted" in capsys.readouterr().out
    exec(upload, kaggle_cell_namespace(tmp_path, submit=False))
    assert "to upload, set submit = True or run:" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------
# The chain: every notebook executed once on the smoke profile (slow: deselect with -m "not notebooks")
# --------------------------------------------------------------------------------------------------------------
def fresh_clone(dest: Path) -> Path:
    """What a fresh clone needs to run the notebooks, without data/, runs/ or caches."""
    for name in ("lib", "notebooks", "report/reference"):  # report/reference: the original logs Figure 1 draws
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copy2(REPO / "requirements.txt", dest / "requirements.txt")
    return dest


def smoke_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIFAR_", "PYTEST_"))}
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in env:  # pytest -n N: share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return {**env, "CIFAR_PROFILE": "smoke", "PYTHONDONTWRITEBYTECODE": "1", **extra}


def papermill(clone: Path, name: str, out_dir: Path, env: dict[str, str], out_name: str | None = None,
              **params) -> subprocess.CompletedProcess:
    """`papermill notebooks/NAME.ipynb OUT -k python3 -p KEY VALUE ...`, as a user types it, from the clone's root."""
    cmd = [sys.executable, "-m", "papermill", f"notebooks/{name}.ipynb", str(out_dir / f"{out_name or name}.ipynb"),
           "-k", "python3", "--no-progress-bar"]
    for key, value in params.items():
        cmd += ["-p", key, str(value)]
    return subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def header_command(name: str) -> list[str]:
    """The shell lines NAME's title cell gives under "Rerun with other settings" (03: mkdir, then papermill)."""
    title = read(name).cells[0].source.split("**Rerun with other settings**")[1]
    return [line.strip() for line in title.splitlines() if line.startswith("    ")]


def papermill_as_in_header(clone: Path, name: str, env: dict[str, str],
                           **params) -> tuple[Path, subprocess.CompletedProcess]:
    """NAME's own header command, run by a shell in the clone, with the chain's -p after the header's (papermill: the
    last value wins). Returns the executed notebook's path and the result."""
    mkdir, command = header_command(name)[:2]
    out = clone / shlex.split(command)[2]
    extra = " ".join(f"-p {k} {shlex.quote(str(v))}" for k, v in params.items())
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-c", f"{mkdir} && {command} --no-progress-bar {extra}"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    return out, proc


class Chain:
    """The clone the chain ran in, and each notebook's papermill result."""

    def __init__(self, clone: Path, out_dir: Path):
        self.clone, self.out_dir, self.results, self.paths = clone, out_dir, {}, {}

    def executed(self, name: str) -> nbformat.NotebookNode:
        """NAME's executed notebook; fails the calling test with papermill's output if NAME's execution failed."""
        proc = self.results[name]
        if proc.returncode != 0:
            pytest.fail(f"papermill {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return nbformat.read(self.paths.get(name, self.out_dir / f"{name}.ipynb"), as_version=4)


@pytest.fixture(scope="session")
def chain(tmp_path_factory) -> Chain:
    """CHAIN executed once, in order, in one fresh clone. A failing notebook does not stop the ones after it: each
    check reports its own notebook."""
    root = tmp_path_factory.mktemp("chain")
    result = Chain(fresh_clone(root / "clone"), root / "executed")
    result.out_dir.mkdir()
    env = smoke_env()
    for name in CHAIN:
        if name == "03_training":  # the command its header gives, which must work on a fresh clone
            result.paths[name], result.results[name] = papermill_as_in_header(result.clone, name, env,
                                                                              **CHAIN_PARAMS[name])
        else:
            result.results[name] = papermill(result.clone, name, result.out_dir, env, **CHAIN_PARAMS.get(name, {}))
    # and a -p name 02 does not have, a misspelt setting for 03: papermill itself only warns
    result.results[TYPO] = papermill(result.clone, "02_architectures", result.out_dir, env, out_name=TYPO,
                                     batch_sise=4)
    result.results[TYPO_03] = papermill(result.clone, "03_training", result.out_dir, env, out_name=TYPO_03,
                                        model=CI_MODEL, label_smoothng=0.2)
    return result


def stream_text(nb) -> str:
    return "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs if o.output_type == "stream")


# A check on the chain: -m "not notebooks" skips it. (Under pytest -n, tests/conftest.py schedules this whole file
# on one worker, so the chain executes once.)
chain_check = pytest.mark.notebooks


@chain_check
@pytest.mark.parametrize("name", CHAIN)
def test_chain_runs_every_notebook(chain, name):
    nb = chain.executed(name)
    injected = any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert injected == bool(CHAIN_PARAMS.get(name)), "papermill -p values land after the parameters cell"


@chain_check
@pytest.mark.parametrize("typo, meant", [(TYPO, "batch_size"), (TYPO_03, "label_smoothing")])
def test_an_unknown_parameter_stops_papermill_before_anything_runs(chain, typo, meant):
    """papermill -p batch_sise 4 (02), -p label_smoothng 0.2 (03, which takes every RunConfig setting): papermill
    warns and injects it; the notebook stops at the injected cell with one line naming the meant one, and no cell
    after it ran."""
    proc = chain.results[typo]
    assert proc.returncode != 0
    executed = nbformat.read(chain.out_dir / f"{typo}.ipynb", as_version=4)
    cells = code_cells(executed)
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", []))
    [error] = [o for o in cells[injected].outputs if o.output_type == "error"]
    assert error.traceback == [f"UserError: {error.evalue}"] and f"did you mean {meant}?" in error.evalue
    assert all(c.execution_count is None and not c.outputs for c in cells[injected + 1:])


@chain_check
def test_overrides_reach_the_run(chain):
    """03's header command (`mkdir -p scratch && papermill ... -p epochs 5 -p dropout 0.2`) on a fresh clone, with
    the chain's -p epochs 1 -p lr 0.05 after it: the run's config.json shows every setting."""
    text = stream_text(chain.executed("03_training"))
    assert "epoch   1/1" in text
    assert "\r" not in text and "it/s" not in text  # headless: no progress bars in the output
    run = chain.clone / OVERRIDE_RUN  # one folder per setting
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 1 and config["dropout"] == 0.2 and config["profile"] == "smoke"
    assert config["lr"] == 0.05  # -p lr: a RunConfig setting the parameters cell does not list
    assert config["model"] == CI_MODEL and config["data_source"] == "synthetic"
    assert config["model_config"]["dropout"] == 0.2  # reached the model, not just the record
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1"]


@chain_check
def test_results_trains_the_run_it_needs_and_reports(chain):
    """04 with no smoke run in runs/ (a fresh Colab runtime) trains it, then writes Figure 1 and Table 1."""
    assert "no smoke run in" in stream_text(chain.executed("04_results"))
    config = json.loads((chain.clone / SMOKE_RUN / "config.json").read_text())
    assert config["profile"] == "smoke" and config["model"] == CI_MODEL and config["data_source"] == "synthetic"
    assert (chain.clone / SMOKE_RUN / "best.pt").is_file()
    for path in ("figures/figure1.png", "figures/figure1.pdf", "report/table1.md", "report/table1.tex"):
        assert (chain.clone / SMOKE_OUT / path).stat().st_size > 0, path
    assert not (chain.clone / "figures").exists() and not list((chain.clone / "report").glob("table1.*")), \
        "smoke output in the committed folders"
    table = (chain.clone / SMOKE_OUT / "report/table1.md").read_text()
    assert "NOT a reproduction" in table and "no real run yet" in table  # a smoke number is never a result


@chain_check
def test_submission_from_the_smoke_run(chain):
    """05 predicts with the smoke run (the one 04 trained) and writes a well-formed submission, never uploaded."""
    text = stream_text(chain.executed("05_kaggle_submission"))
    assert "no smoke run in" not in text and f"{SMOKE_RUN}/best.pt" in text
    assert "not submitting" in text  # a smoke submission is never uploaded
    _, ids = load_kaggle_test(chain.clone / "data/smoke/kaggle_test.pkl")
    with open(chain.clone / SMOKE_OUT / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "Labels"]
    assert [int(r[0]) for r in rows[1:]] == ids.tolist()  # the pickle's id order
    assert all(0 <= int(r[1]) <= 9 for r in rows[1:])


@chain_check
def test_analysis_of_the_smoke_run(chain):
    """06 analyses the smoke run: metrics.json agrees with its own predictions.npz."""
    chain.executed("06_analysis")
    out = chain.clone / SMOKE_RUN / "analysis"
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = np.load(out / "predictions.npz")
    assert metrics["n"] == len(predictions["labels"]) > 0
    assert metrics["accuracy"] == float((predictions["probs"].argmax(1) == predictions["labels"]).mean())
    for name in ("confusion.png", "reliability.png", "corruptions.csv", "mistakes.png"):
        assert (out / name).stat().st_size > 0, name


@chain_check
def test_sweep_study_on_smoke(chain):
    """07 runs a tiny 2 x 2 sweep on a local Ray and draws it: four finished trials, the figure and the table."""
    chain.executed("07_sweep")
    sweep_dir = chain.clone / f"runs/sweep_{CI_MODEL}_smoke"
    with open(sweep_dir / "sweep.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["finished"] * 4
    for path in (f"figures/sweep_{CI_MODEL}_smoke.png", f"report/sweep_{CI_MODEL}_smoke.md"):
        assert (chain.clone / SMOKE_OUT / path).stat().st_size > 0, path


@chain_check
def test_chain_leaves_the_notebooks_clean(chain):
    """Executed copies go elsewhere: notebooks/ still holds exactly the clean notebooks."""
    assert sorted(p.name for p in (chain.clone / "notebooks").iterdir()) == [f"{n}.ipynb" for n in CHAIN]

