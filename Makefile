# Every target runs inside the project's virtual environment (.venv), created or refreshed from requirements.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYTHONUNBUFFERED := 1

SCRATCH ?= scratch
# papermill runs the notebooks on the `python3` kernel, which resolves to this venv (.venv/bin is first on PATH).
PAPERMILL := $(PY) -m papermill -k python3 --no-progress-bar --log-output
# `make smoke`: the model of the smoke run (the notebooks' default, the report's best model).
SMOKE_MODEL ?= robust_resnet64
SMOKE_RUNS  := $(SCRATCH)/smoke/runs
SMOKE_NB    := CIFAR_PROFILE=smoke $(PAPERMILL)
# `make sweep`: a hyper-parameter sweep on Ray Tune (python -m lib.sweep; a local Ray unless SWEEP_ADDRESS names a
# cluster), then its figure (figures/sweep_<name>.png) and table (report/sweep_<name>.md). SWEEP_PARAMS: one
# NAME=V1,V2 per swept setting; SWEEP_PROFILE=paper for real runs (GPU); SWEEP_ARGS: any further lib.sweep option,
# e.g. "--scheduler asha --gpus-per-trial 0.5". Rerunning continues the sweep (--resume).
SWEEP_PROFILE ?= smoke
SWEEP_MODEL   ?= light_resnet18
SWEEP_PARAMS  ?= dropout=0.0,0.1 lr=0.05,0.1
SWEEP_NAME    ?= $(SWEEP_MODEL)_$(SWEEP_PROFILE)
SWEEP_DIR     ?= runs/sweep_$(SWEEP_NAME)
SWEEP_ADDRESS ?=
SWEEP_ARGS    ?=
# Models of the report's Table 1 that `make reproduce` trains with the paper profile.
REPRODUCE_MODELS ?= light_resnet18 light_resnet18_v2 light_resnet18_v2_b45 robust_resnet64

.PHONY: venv test smoke reproduce sweep lab bench clean colab-links

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The test suite: unit tests, the notebooks under nbval and papermill (tests/test_notebooks.py), all on smoke
# data, on the CPU.
test: venv
	$(PY) -m pytest -q -n 2

# Notebooks 01-05 on the smoke profile (synthetic CIFAR-format data in data/smoke when CIFAR-10 is absent), executed
# with papermill into $(SCRATCH)/smoke/: 03 trains, 04 writes figures/figure1.png(.pdf) and report/table1.md(.tex)
# (marked "NOT a reproduction"), 05 writes $(SCRATCH)/smoke/submission.csv.
smoke: venv
	rm -rf $(SCRATCH)/smoke
	mkdir -p $(SCRATCH)/smoke
	$(SMOKE_NB) notebooks/01_data_exploration.ipynb $(SCRATCH)/smoke/01_data_exploration.ipynb
	$(SMOKE_NB) notebooks/02_architectures.ipynb $(SCRATCH)/smoke/02_architectures.ipynb
	$(SMOKE_NB) notebooks/03_training.ipynb $(SCRATCH)/smoke/03_training.ipynb \
		-p model $(SMOKE_MODEL) -p runs_dir $(SMOKE_RUNS)
	$(SMOKE_NB) notebooks/04_results.ipynb $(SCRATCH)/smoke/04_results.ipynb \
		-p model $(SMOKE_MODEL) -p runs_dir $(SMOKE_RUNS)
	$(SMOKE_NB) notebooks/05_kaggle_submission.ipynb $(SCRATCH)/smoke/05_kaggle_submission.ipynb \
		-p model $(SMOKE_MODEL) -p runs_dir $(SMOKE_RUNS) -p submission_file $(SCRATCH)/smoke/submission.csv
	@echo "smoke: executed notebooks and $(SCRATCH)/smoke/submission.csv in $(SCRATCH)/smoke/;" \
		"figures/figure1.png, report/table1.md and report/table1.tex rewritten from the smoke run"

# The report's runs (paper profile, 300 epochs; needs a GPU). Downloads CIFAR-10 into data/ if absent.
reproduce: venv
	for m in $(REPRODUCE_MODELS); do \
		$(PY) -m lib.train --model $$m --data-dir data --download --out runs/$$m --resume || exit 1; \
	done
	$(PY) -m lib.report --runs $(addprefix runs/,$(REPRODUCE_MODELS)) --figures figures --report report

sweep: venv
	$(PY) -c "import ray.tune" 2>/dev/null || $(PY) -m pip install --quiet -r tests/requirements.txt  # Ray: lib.sweep only
	$(PY) -m lib.sweep --profile $(SWEEP_PROFILE) --model $(SWEEP_MODEL) $(addprefix --param ,$(SWEEP_PARAMS)) \
		$(if $(SWEEP_ADDRESS),--address $(SWEEP_ADDRESS)) --out $(SWEEP_DIR) --resume $(SWEEP_ARGS)
	$(PY) -m lib.report --sweep $(SWEEP_DIR) --figures figures --report report

# JupyterLab on the repository, in the project's environment, opened at notebooks/ (LAB_ARGS: e.g. --port 8889,
# or --allow-root inside a container).
LAB_ARGS ?=
lab: venv
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks $(LAB_ARGS)

bench: venv
	$(PY) -m lib.bench --json $(SCRATCH)/bench.json

clean:
	rm -rf $(SCRATCH) runs/*_smoke* data/smoke .pytest_cache

# Point the README's "Open in Colab" badges and the notebooks' clone cell at a GitHub copy: make colab-links REPO=user/name
colab-links:
	@test -n "$(REPO)" || { echo "usage: make colab-links REPO=github-user/repository" >&2; exit 2; }
	sed -i 's#github/[A-Za-z0-9_.-]*/[A-Za-z0-9_.-]*/blob/main/notebooks#github/$(REPO)/blob/main/notebooks#g' README.md
	sed -i 's#https://github.com/[A-Za-z0-9_.-]*/[A-Za-z0-9_.-]*\.git#https://github.com/$(REPO).git#g' notebooks/*.ipynb
