"""requirements.txt holds only what lib/ and the notebooks import, and Colab already has all of it: the notebooks'
set-up (lib.colab.notebook) installs only what is missing and never changes a preinstalled package."""
from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

import nbformat
from IPython.core.inputtransformer2 import TransformerManager
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent

# Colab's preinstalled versions (GPU runtime, googlecolab/backend-info pip-freeze.gpu.txt of the torch 2.11 image;
# Colab moved to Python 3.13 in August 2026). Update the table when Colab moves on.
COLAB_PYTHON = "3.13"
COLAB = {"torch": "2.11.0+cu128", "torchvision": "0.26.0+cu128", "numpy": "2.0.2", "pandas": "2.2.2",
         "matplotlib": "3.10.0", "seaborn": "0.13.2", "pillow": "11.3.0", "tqdm": "4.67.3", "tabulate": "0.9.0",
         "jinja2": "3.1.6", "packaging": "26.2"}
# Kernel and front-end packages Colab pins for its own runtime: installing requirements.txt must never touch them.
COLAB_PINNED = {"ipykernel": "6.17.1", "ipython": "7.34.0", "notebook": "6.5.7", "jupyter-client": "7.4.9",
                "ipywidgets": "7.7.1", "traitlets": "5.7.1", "tornado": "6.5.1"}
# Required, though nothing imports them by name: pandas loads them for to_markdown / Styler.to_latex (Table 1);
# seaborn is for the analysis plots.
INDIRECT = {"tabulate", "jinja2", "seaborn"}
# Always there where a notebook runs (the kernel itself, Colab's own modules), never installed by us; kornia,
# which only `python -m lib.bench --kornia` imports, as an optional comparison; and Ray, which only lib.scale.sweep and
# notebook 07 import (tests/requirements.txt has it; 07's set-up installs it on Colab): training never needs it.
NOT_REQUIRED = {"IPython", "google", "kornia"}
OPTIONAL = {"ray"}


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def runtime_imports() -> set[str]:
    """Top-level modules imported by lib/*.py and the notebooks' code cells."""
    sources = [p.read_text() for p in sorted((REPO / "lib").glob("*.py"))]
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        sources += [TransformerManager().transform_cell(c.source)
                    for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code"]
    modules = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - NOT_REQUIRED - OPTIONAL - {"lib"}


def test_runtime_requirements_are_exactly_what_lib_and_the_notebooks_use():
    required = {canonicalize_name(r.name) for r in requirements(REPO / "requirements.txt")}
    providers = importlib.metadata.packages_distributions()  # import name -> distributions that provide it
    imported = set()
    for module in runtime_imports():
        assert module in providers, f"{module}: imported by lib/ or a notebook, but no installed package provides it"
        imported.update(canonicalize_name(d) for d in providers[module])
    assert imported <= required, f"imported but not in requirements.txt: {sorted(imported - required)}"
    extra = required - imported - INDIRECT
    assert not extra, f"in requirements.txt but used by neither lib/ nor the notebooks: {sorted(extra)}"


def test_optional_packages_are_development_requirements_only():
    """Ray: in tests/requirements.txt (make venv, CI), not in requirements.txt (every notebook's set-up would install it on Colab)."""
    development = {canonicalize_name(r.name) for r in requirements(REPO / "tests" / "requirements.txt")}
    runtime = {canonicalize_name(r.name) for r in requirements(REPO / "requirements.txt")}
    assert OPTIONAL <= development and not OPTIONAL & runtime


def test_requirements_admit_colabs_preinstalled_versions():
    """Every runtime requirement is preinstalled on Colab in a version its range admits: nothing to install."""
    environment = {**default_environment(), "python_version": COLAB_PYTHON, "python_full_version": COLAB_PYTHON + ".0"}
    for req in requirements(REPO / "requirements.txt"):
        name = canonicalize_name(req.name)
        assert req.marker is None or req.marker.evaluate(environment), f"{req}: not for Python {COLAB_PYTHON}"
        assert name in COLAB, f"{req}: not preinstalled on Colab, so the notebooks' set-up would install it"
        assert req.specifier.contains(COLAB[name], prereleases=True), f"{req} rejects Colab's {name} {COLAB[name]}"
        assert name not in COLAB_PINNED, f"{req}: a package Colab pins for its kernel"


def test_development_tools_are_apart():
    runtime = {canonicalize_name(r.name) for r in requirements(REPO / "requirements.txt")}
    dev_file = REPO / "tests" / "requirements.txt"
    first = next(line for line in dev_file.read_text().splitlines() if line.strip() and not line.startswith("#"))
    assert first.strip() == "-r ../requirements.txt", "tests/requirements.txt builds on the runtime requirements"
    dev = {canonicalize_name(r.name) for r in requirements(dev_file)}
    assert {"papermill", "nbval", "pytest", "pytest-xdist", "jupyterlab", "ipykernel"} <= dev
    assert not dev & runtime, f"listed twice: {sorted(dev & runtime)}"
    assert "tests/requirements.txt" in (REPO / "Makefile").read_text(), "make venv installs the development file"


# --------------------------------------------------------------------------------------------------------------
# What lib.colab.notebook.setup() installs on Colab (tests/test_notebook_setup.py runs the first cells themselves)
# --------------------------------------------------------------------------------------------------------------
def colab_version(installed: dict[str, str]):
    def version(name):
        if canonicalize_name(name) not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return installed[canonicalize_name(name)]
    return version


def test_setup_installs_nothing_on_colab():
    from lib.colab.notebook import missing_requirements

    lines = (REPO / "requirements.txt").read_text().splitlines()
    assert missing_requirements(lines, colab_version({**COLAB, **COLAB_PINNED})) == ([], [])


def test_setup_installs_only_what_is_missing_and_says_what_it_leaves():
    from lib.colab.notebook import missing_requirements

    colab = {**COLAB, "numpy": "1.23.5"}  # older than requirements.txt asks: reported, left alone
    del colab["seaborn"]
    missing, notes = missing_requirements((REPO / "requirements.txt").read_text().splitlines(), colab_version(colab))
    assert missing == ["seaborn>=0.13"]
    assert notes == ["note: this runtime has numpy 1.23.5, requirements.txt asks for >=1.24"]
